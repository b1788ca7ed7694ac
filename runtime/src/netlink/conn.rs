//! The netlink socket: generation id, batch commit, and read-back.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use rustc_hash::FxHashSet;

use super::attr::{self, Attrs, Writer};
use super::batch::Batch;
use super::codec::*;
use super::objects::{Chain, Element, Family, Rule, Set, Table};
use super::Error;

const RECV_BUF: usize = 1 << 20;
const RCVBUF_SIZE: usize = 8 << 20;
/// Reads retried when the ruleset changes underneath a read-back.
const READ_ATTEMPTS: usize = 5;
/// Threads, each with its own socket, that read a table at once: two halve a
/// read on the two cores of the smallest nodes.
const READERS: usize = 2;

/// Decodes a dumped object into its table's name and the object.
type Decoder<T> = fn(&[u8]) -> Result<(String, T), Error>;

/// Everything in one table, as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableState {
    /// The generation this state was read at: commit against it.
    pub generation: u32,
    pub table: Table,
    pub chains: Vec<Chain>,
    pub sets: Vec<(Set, Vec<Element>)>,
    /// Chain by chain in the order of `chains`, each chain's in rule order,
    /// with handles.
    pub rules: Vec<Rule>,
}

/// Netlink sockets to nf_tables in the calling thread's network namespace.
pub struct Conn {
    sock: Socket,
    /// Sockets of the extra threads of a table read, opened with `sock` so
    /// that they are in its network namespace whichever thread reads.
    readers: Vec<Socket>,
    seq: u32,
    buf: Vec<u8>,
    /// How table reads dump rules; `None` picks the cheaper way.
    whole_table_rules: Option<bool>,
}

fn setsockopt(sock: &Socket, opt: libc::c_int, value: usize) -> io::Result<()> {
    let v = value.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `req` and feeds each reply to `seq` to `on`, until the dump ends or
/// the request is acknowledged.
pub(super) fn exchange(
    sock: &Socket,
    buf: &mut [u8],
    req: &[u8],
    seq: u32,
    mut on: impl FnMut(&RawMsg) -> Result<(), Error>,
) -> Result<(), Error> {
    sock.send(req, 0)?;
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for msg in messages(&buf[..n]) {
            let msg = msg?;
            if msg.seq != seq {
                continue;
            }
            match msg.ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let (errno, _) = nlmsgerr(msg.payload)?;
                    return if errno == 0 { Ok(()) } else { Err(kernel_error(errno)) };
                }
                _ => on(&msg)?,
            }
        }
    }
}

fn kernel_error(errno: i32) -> Error {
    if errno == libc::EPERM {
        Error::PermissionDenied
    } else {
        Error::Kernel(io::Error::from_raw_os_error(errno))
    }
}

/// The errno and original sequence number of an `NLMSG_ERROR` (0 is an ack).
fn nlmsgerr(payload: &[u8]) -> Result<(i32, u32), Error> {
    let errno = payload
        .get(0..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(Error::Malformed("short error message".into()))?;
    let seq = payload.get(12..16).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
    Ok((errno, seq))
}

fn open_socket() -> Result<Socket, Error> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    // Dumps of large tables and bursts of batch errors must not overflow.
    if setsockopt(&sock, libc::SO_RCVBUFFORCE, RCVBUF_SIZE).is_err() {
        sock.set_rx_buf_sz(RCVBUF_SIZE)?;
    }
    Ok(sock)
}

/// Dumps the objects of kind `m` in one chain or set of a table (attribute 2
/// names the chain of a rule dump and the set of an element dump), or, with
/// `within` `None`, in the whole table.
fn dump_in(
    sock: &Socket,
    buf: &mut [u8],
    req: &mut Vec<u8>,
    seq: u32,
    (m, family): (Msg, u8),
    (table, within): (&str, Option<&str>),
    on: impl FnMut(&RawMsg) -> Result<(), Error>,
) -> Result<(), Error> {
    req.clear();
    let start = begin_msg(req, nft_type(m), NLM_F_DUMP, seq, family, 0);
    let mut w = Writer { buf: req };
    w.str(1, table);
    if let Some(within) = within {
        w.str(2, within);
    }
    end_msg(req, start);
    exchange(sock, buf, req, seq, on)
}

/// The elements of one set. The kernel resumes a set dump by counting elements
/// from the start of its hash table, so a dump that meets the table being
/// resized (after a burst of inserts) returns some elements twice and, as many,
/// not at all: a dump with a repeated element is taken again, a little later
/// each time.
fn set_elements(
    sock: &Socket,
    buf: &mut [u8],
    req: &mut Vec<u8>,
    seq: u32,
    family: u8,
    (table, set): (&str, &str),
) -> Result<Vec<Element>, Error> {
    for attempt in 0..READ_ATTEMPTS as u64 {
        thread::sleep(std::time::Duration::from_millis(attempt * attempt));
        let mut elems = Vec::new();
        dump_in(sock, buf, req, seq, (Msg::GetSetElem, family), (table, Some(set)), |msg| {
            decode_elem_list(msg.attrs(), &mut elems)
        })?;
        let mut seen = FxHashSet::with_capacity_and_hasher(elems.len(), Default::default());
        if elems.iter().all(|e| seen.insert((&e.key, e.interval_end))) {
            return Ok(elems);
        }
    }
    Err(Error::Malformed(format!("set {set}: every dump repeated elements")))
}

/// The rules of one chain, in order, with their handles; with `chain` `None`,
/// those of every chain of the table, chain by chain in the table's order.
fn chain_rules(
    sock: &Socket,
    buf: &mut [u8],
    req: &mut Vec<u8>,
    seq: u32,
    family: u8,
    (table, chain): (&str, Option<&str>),
) -> Result<Vec<Rule>, Error> {
    let mut out = Vec::new();
    dump_in(sock, buf, req, seq, (Msg::GetRule, family), (table, chain), |msg| {
        let (t, rule) = decode_rule(msg.attrs())?;
        if t == table && chain.is_none_or(|c| rule.chain == c) {
            out.push(rule);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Whether to read a table's rules in one dump rather than chain by chain.
///
/// The kernel resumes a rule dump, for every 32 KiB reply, by walking every
/// rule before the point it stopped at, so one dump of a table costs about
/// 1 µs a rule plus 0.12 ns per rule squared (kernel 6.18: 15k rules in
/// 40 ms, 48k in 315 ms), on one thread; chain by chain, about 5.4 µs a
/// request plus 3 µs a rule, shared by the reading threads (15k rules in
/// 12k chains: 117 ms, 48k: 234 ms). The rules are not known before they are
/// read: svcnft's chains hold one or two each, and every session-affinity
/// (dynamic) set brings two more, so `chains + 2 × dynamic sets` estimates
/// them. Either way reads the same rules; this only picks the faster.
fn whole_table_rule_dump(chains: usize, dynamic_sets: usize) -> bool {
    let rules = (chains + 2 * dynamic_sets) as f64;
    let whole = rules + 1.2e-4 * rules * rules;
    let chain_by_chain = 5.4 * chains as f64 + 3.0 * rules;
    whole < chain_by_chain
}

/// One request of a table read that threads share out.
enum Job<'a> {
    /// The elements of the set at this index, and its name.
    Elements(usize, &'a str),
    /// The rules of this chain, or of the whole table.
    Rules(Option<&'a str>),
}

enum Reply {
    Elements(usize, Vec<Element>),
    Rules(Vec<Rule>),
}

/// Runs the jobs whose indices it takes from `next` until none are left, on
/// `sock`; several threads share `next`, so the one that gets more CPU does
/// more. Job `i` is requested with sequence number `seq + i`.
fn run_jobs(
    sock: &Socket,
    buf: &mut [u8],
    (family, table): (u8, &str),
    jobs: &[Job],
    next: &AtomicUsize,
    seq: u32,
) -> Result<Vec<(usize, Reply)>, Error> {
    let mut req = Vec::new();
    let mut out = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let seq = seq.wrapping_add(i as u32);
        let reply = match jobs.get(i) {
            None => return Ok(out),
            Some(&Job::Rules(chain)) => Reply::Rules(chain_rules(sock, buf, &mut req, seq, family, (table, chain))?),
            Some(&Job::Elements(set, set_name)) => {
                Reply::Elements(set, set_elements(sock, buf, &mut req, seq, family, (table, set_name))?)
            }
        };
        out.push((i, reply));
    }
}

impl Conn {
    pub fn open() -> Result<Self, Error> {
        let readers = (1..READERS).map(|_| open_socket()).collect::<Result<_, _>>()?;
        Ok(Conn { sock: open_socket()?, readers, seq: 0, buf: vec![0; RECV_BUF], whole_table_rules: None })
    }

    /// Makes table reads dump rules in one request for the whole table
    /// (`Some(true)`), chain by chain (`Some(false)`), or whichever is cheaper
    /// (`None`, the default): tests read back both ways.
    #[cfg(feature = "testing")]
    pub fn set_whole_table_rules(&mut self, whole: Option<bool>) {
        self.whole_table_rules = whole;
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and feeds each reply message to `on` until the
    /// dump ends (or, for a plain get, until the first reply).
    fn request(
        &mut self,
        m: Msg,
        family: u8,
        dump: bool,
        attrs: impl FnOnce(&mut Writer),
        on: impl FnMut(&RawMsg) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let seq = self.next_seq();
        let mut req = Vec::new();
        let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let start = begin_msg(&mut req, nft_type(m), flags, seq, family, 0);
        attrs(&mut Writer { buf: &mut req });
        end_msg(&mut req, start);
        exchange(&self.sock, &mut self.buf, &req, seq, on)
    }

    /// The ruleset generation: any committed change increments it.
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut gen = None;
        self.request(
            Msg::GetGen,
            libc::AF_UNSPEC as u8,
            false,
            |_| {},
            |msg| {
                for a in Attrs::new(msg.attrs()) {
                    if let (1, v) = a? {
                        gen = Some(attr::be32(v)?);
                    }
                }
                Ok(())
            },
        )?;
        gen.ok_or(Error::Malformed("generation reply without id".into()))
    }

    /// Commits the batch atomically. With `generation`, the kernel refuses it
    /// ([`Error::GenerationChanged`]) if anything changed since.
    /// An empty batch sends nothing.
    pub fn commit(&mut self, batch: &Batch, generation: Option<u32>) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes = batch.encode(generation);
        // A batch split over several sends is no batch: raise the send buffer
        // so the kernel takes it whole.
        setsockopt(&self.sock, libc::SO_SNDBUFFORCE, bytes.len() + 4096)
            .or_else(|_| setsockopt(&self.sock, libc::SO_SNDBUF, bytes.len() + 4096))?;
        let sent = self.sock.send(&bytes, 0)?;
        if sent != bytes.len() {
            return Err(Error::Malformed(format!("short send: {sent} of {} bytes", bytes.len())));
        }
        // The kernel processes the batch inside send(): every error is
        // already queued, so draining without blocking sees them all.
        let mut first = None;
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
            for msg in messages(&self.buf[..n]) {
                let msg = msg?;
                if msg.ty != NLMSG_ERROR {
                    continue;
                }
                let (errno, seq) = nlmsgerr(msg.payload)?;
                if errno != 0 && first.is_none() {
                    first = Some((errno, seq));
                }
            }
        }
        match first {
            None => Ok(()),
            Some((libc::ERESTART, 0)) if generation.is_some() => Err(Error::GenerationChanged),
            Some((libc::EPERM, _)) => Err(Error::PermissionDenied),
            Some((errno, seq)) => match batch.op_of_seq(seq) {
                Some(index) => Err(Error::Rejected {
                    index,
                    op: batch.ops()[index].clone(),
                    source: io::Error::from_raw_os_error(errno),
                }),
                None => Err(Error::Kernel(io::Error::from_raw_os_error(errno))),
            },
        }
    }

    /// Reads one table and everything in it, consistently at one generation;
    /// `None` if the table does not exist. Requests are filtered by table (rules
    /// by chain too) except for chains, which the kernel dumps per family: those
    /// of other tables are dropped unread.
    pub fn read_table(&mut self, family: Family, name: &str) -> Result<Option<TableState>, Error> {
        self.read_table_with(family, name, true)
    }

    /// Like [`Conn::read_table`], without the elements of dynamic sets: those are
    /// the data path's state (clients filled in by `update`), not configuration,
    /// and each set's elements take one request that the kernel answers by
    /// searching the table's sets by name, so reading thousands of them grows
    /// with the square of their number.
    pub fn read_table_config(&mut self, family: Family, name: &str) -> Result<Option<TableState>, Error> {
        self.read_table_with(family, name, false)
    }

    fn read_table_with(&mut self, family: Family, name: &str, dynamic: bool) -> Result<Option<TableState>, Error> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.generation()?;
            let state = self.read_table_once(family, name, before, dynamic)?;
            if self.generation()? == before {
                return Ok(state);
            }
        }
        Err(Error::GenerationChanged)
    }

    /// The rules of one chain, in order, with their handles: how a caller learns
    /// the handles of rules it just added without reading the whole table.
    pub fn read_rules(&mut self, family: Family, table: &str, chain: &str) -> Result<Vec<Rule>, Error> {
        let seq = self.next_seq();
        chain_rules(&self.sock, &mut self.buf, &mut Vec::new(), seq, family.code(), (table, Some(chain)))
    }

    /// Dumps one kind of object, asking the kernel to filter by table and
    /// keeping only that table's objects where it does not.
    fn dump_table<T>(&mut self, m: Msg, family: u8, table: &str, decode: Decoder<T>) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        self.request(
            m,
            family,
            true,
            |w| w.str(1, table),
            |msg| {
                let (t, obj) = decode(msg.attrs())?;
                if t == table {
                    out.push(obj);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn read_table_once(
        &mut self,
        family: Family,
        name: &str,
        generation: u32,
        dynamic: bool,
    ) -> Result<Option<TableState>, Error> {
        let fam = family.code();
        let mut found = false;
        let res = self.request(
            Msg::GetTable,
            fam,
            false,
            |w| w.str(1, name),
            |msg| {
                found |= msg.nft() == Some(Msg::NewTable as u16) && decode_table_name(msg.attrs())? == name;
                Ok(())
            },
        );
        match res {
            Err(Error::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            r => r?,
        }
        if !found {
            return Ok(None);
        }
        let chains = self.dump_table(Msg::GetChain, fam, name, decode_chain)?;
        let mut sets: Vec<(Set, Vec<Element>)> =
            self.dump_table(Msg::GetSet, fam, name, decode_set)?.into_iter().map(|set| (set, Vec::new())).collect();
        // Then one request per set for its elements, and for the rules one for
        // the whole table or one per chain, shared out among threads: the
        // kernel's cost of filling the replies dominates, and it runs in the
        // thread that asks. The whole table's rules in one request, first (the
        // longest job), when that is cheaper; else chain by chain, after the
        // sets (a few of them are large).
        let dynamic_sets = sets.iter().filter(|(set, _)| set.flags.dynamic).count();
        let whole = self.whole_table_rules.unwrap_or_else(|| whole_table_rule_dump(chains.len(), dynamic_sets));
        let jobs: Vec<Job> = whole
            .then_some(Job::Rules(None))
            .into_iter()
            .chain(
                sets.iter()
                    .enumerate()
                    .filter(|(_, (set, _))| dynamic || !set.flags.dynamic)
                    .map(|(i, (set, _))| Job::Elements(i, &set.name)),
            )
            .chain(chains.iter().filter(|_| !whole).map(|chain| Job::Rules(Some(&chain.name))))
            .collect();
        let seq = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(jobs.len() as u32);
        let next = AtomicUsize::new(0);
        let mut replies: Vec<Option<Reply>> = std::iter::repeat_with(|| None).take(jobs.len()).collect();
        thread::scope(|s| {
            let helpers: Vec<_> = self
                .readers
                .iter()
                .map(|sock| {
                    let (jobs, next) = (&jobs, &next);
                    s.spawn(move || run_jobs(sock, &mut vec![0; RECV_BUF], (fam, name), jobs, next, seq))
                })
                .collect();
            let mine = run_jobs(&self.sock, &mut self.buf, (fam, name), &jobs, &next, seq);
            for part in helpers.into_iter().map(|h| h.join().expect("a table reader panicked")).chain([mine]) {
                for (i, reply) in part? {
                    replies[i] = Some(reply);
                }
            }
            Ok::<_, Error>(())
        })?;
        let mut rules = Vec::new();
        for reply in replies.into_iter().flatten() {
            match reply {
                Reply::Elements(set, elems) => sets[set].1 = elems,
                Reply::Rules(r) => rules.extend(r),
            }
        }
        Ok(Some(TableState { generation, table: Table { family, name: name.to_owned() }, chains, sets, rules }))
    }
}
