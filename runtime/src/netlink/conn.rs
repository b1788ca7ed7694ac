//! The netlink socket: generation id, batch commit, and read-back.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// Everything in one table, as the kernel holds it: each set with its
/// elements, or what a reader made of them (see [`Conn::read_table_config_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableState<E = Vec<Element>> {
    /// The generation this state was read at: commit against it.
    pub generation: u32,
    pub table: Table,
    pub chains: Vec<Chain>,
    pub sets: Vec<(Set, E)>,
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

/// Dumps one kind of object, asking the kernel to filter by table and keeping
/// only that table's objects where it does not.
fn dump_objects<T>(
    sock: &Socket,
    buf: &mut [u8],
    seq: u32,
    (m, family): (Msg, u8),
    table: &str,
    decode: Decoder<T>,
) -> Result<Vec<T>, Error> {
    let mut req = Vec::new();
    let start = begin_msg(&mut req, nft_type(m), NLM_F_DUMP, seq, family, 0);
    Writer { buf: &mut req }.str(1, table);
    end_msg(&mut req, start);
    let mut out = Vec::new();
    exchange(sock, buf, &req, seq, |msg| {
        let (t, obj) = decode(msg.attrs())?;
        if t == table {
            out.push(obj);
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

/// The rule requests of a table read: one for the whole table (`None`) or
/// one per chain. They wait for the chain list, which is read while the
/// sets' elements already are.
type RuleJobs = Mutex<Option<Arc<Vec<Option<String>>>>>;

/// Publishes no rule jobs when dropped before the real ones are, as when the
/// chain list cannot be read: no thread is left waiting for them.
struct NoRulesOnDrop<'a, 'b, E>(&'a Jobs<'b, E>);

impl<E> Drop for NoRulesOnDrop<'_, '_, E> {
    fn drop(&mut self) {
        self.0.publish_rules(Vec::new());
    }
}

/// What one reading thread read: elements by set index, rules by rule job.
struct Part<E> {
    elements: Vec<(usize, E)>,
    rules: Vec<(usize, Vec<Rule>)>,
}

impl<E> Default for Part<E> {
    fn default() -> Self {
        Part { elements: Vec::new(), rules: Vec::new() }
    }
}

/// The requests of a table read that threads share out, each thread taking
/// the next one of a kind, so the one that gets more CPU does more. Element
/// job `i` is requested with sequence number `seq + i`, rule job `i` with
/// `seq + elements + i`.
struct Jobs<'a, E> {
    table: (u8, &'a str),
    sets: &'a [Set],
    /// The indices of the sets whose elements to read.
    elements: Vec<usize>,
    /// What becomes of a set's elements.
    each: &'a (dyn Fn(&Set, Vec<Element>) -> E + Sync),
    next_element: AtomicUsize,
    rules: RuleJobs,
    rules_ready: Condvar,
    next_rule: AtomicUsize,
    seq: u32,
}

impl<E> Jobs<'_, E> {
    /// Makes the rule jobs known, unless they are already.
    fn publish_rules(&self, jobs: Vec<Option<String>>) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| Arc::new(jobs));
        self.rules_ready.notify_all();
    }

    fn run_elements(&self, sock: &Socket, buf: &mut [u8], req: &mut Vec<u8>, part: &mut Part<E>) -> Result<(), Error> {
        let (family, table) = self.table;
        loop {
            let i = self.next_element.fetch_add(1, Ordering::Relaxed);
            let Some(&set) = self.elements.get(i) else { return Ok(()) };
            let seq = self.seq.wrapping_add(i as u32);
            let elements = set_elements(sock, buf, req, seq, family, (table, &self.sets[set].name))?;
            part.elements.push((set, (self.each)(&self.sets[set], elements)));
        }
    }

    fn run_rules(&self, sock: &Socket, buf: &mut [u8], req: &mut Vec<u8>, part: &mut Part<E>) -> Result<(), Error> {
        let (family, table) = self.table;
        let jobs = {
            let published = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            let published = self.rules_ready.wait_while(published, |j| j.is_none()).unwrap_or_else(|e| e.into_inner());
            published.clone().unwrap_or_default()
        };
        let first = self.seq.wrapping_add(self.elements.len() as u32);
        loop {
            let i = self.next_rule.fetch_add(1, Ordering::Relaxed);
            let Some(chain) = jobs.get(i) else { return Ok(()) };
            let seq = first.wrapping_add(i as u32);
            part.rules.push((i, chain_rules(sock, buf, req, seq, family, (table, chain.as_deref()))?));
        }
    }

    /// A helper thread's share: elements, then rules.
    fn run(&self, sock: &Socket, buf: &mut [u8]) -> Result<Part<E>, Error> {
        let (mut req, mut part) = (Vec::new(), Part::default());
        self.run_elements(sock, buf, &mut req, &mut part)?;
        self.run_rules(sock, buf, &mut req, &mut part)?;
        Ok(part)
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
        self.read_table_with(family, name, true, &|_, elements| elements)
    }

    /// Like [`Conn::read_table`], without the elements of dynamic sets: those are
    /// the data path's state (clients filled in by `update`), not configuration,
    /// and each set's elements take one request that the kernel answers by
    /// searching the table's sets by name, so reading thousands of them grows
    /// with the square of their number.
    pub fn read_table_config(&mut self, family: Family, name: &str) -> Result<Option<TableState>, Error> {
        self.read_table_config_with(family, name, &|_, elements| elements)
    }

    /// Like [`Conn::read_table_config`], handing each set's elements to `each`
    /// on the thread that read them, while they are fresh in its cache (those
    /// of dynamic sets, unread, as none): a table's hundreds of thousands of
    /// elements are then decoded by the reading threads.
    pub fn read_table_config_with<E: Send>(
        &mut self,
        family: Family,
        name: &str,
        each: &(dyn Fn(&Set, Vec<Element>) -> E + Sync),
    ) -> Result<Option<TableState<E>>, Error> {
        self.read_table_with(family, name, false, each)
    }

    fn read_table_with<E: Send>(
        &mut self,
        family: Family,
        name: &str,
        dynamic: bool,
        each: &(dyn Fn(&Set, Vec<Element>) -> E + Sync),
    ) -> Result<Option<TableState<E>>, Error> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.generation()?;
            let state = self.read_table_once(family, name, before, dynamic, each)?;
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

    /// Dumps one kind of object of a table (see [`dump_objects`]).
    fn dump_table<T>(&mut self, m: Msg, family: u8, table: &str, decode: Decoder<T>) -> Result<Vec<T>, Error> {
        let seq = self.next_seq();
        dump_objects(&self.sock, &mut self.buf, seq, (m, family), table, decode)
    }

    fn read_table_once<E: Send>(
        &mut self,
        family: Family,
        name: &str,
        generation: u32,
        dynamic: bool,
        each: &(dyn Fn(&Set, Vec<Element>) -> E + Sync),
    ) -> Result<Option<TableState<E>>, Error> {
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
        let sets: Vec<Set> = self.dump_table(Msg::GetSet, fam, name, decode_set)?;
        // Then one request per set for its elements, and for the rules one for
        // the whole table or one per chain, shared out among threads: the
        // kernel's cost of filling the replies dominates, and it runs in the
        // thread that asks. The helpers start on the sets while this thread
        // reads the chain list, then takes the rules: the whole table's at
        // once (the longest request) when that is cheaper, else chain by
        // chain, with the helpers once the sets are read.
        let dynamic_sets = sets.iter().filter(|set| set.flags.dynamic).count();
        let jobs = Jobs {
            table: (fam, name),
            sets: &sets,
            elements: (0..sets.len()).filter(|i| dynamic || !sets[*i].flags.dynamic).collect(),
            each,
            next_element: AtomicUsize::new(0),
            rules: Mutex::new(None),
            rules_ready: Condvar::new(),
            next_rule: AtomicUsize::new(0),
            seq: self.seq.wrapping_add(2),
        };
        let chains_seq = self.seq.wrapping_add(1);
        let whole_table_rules = self.whole_table_rules;
        let Conn { sock, readers, buf, .. } = self;
        let (chains, parts) = thread::scope(|s| {
            let helpers: Vec<_> =
                readers.iter().map(|sock| s.spawn(|| jobs.run(sock, &mut vec![0; RECV_BUF]))).collect();
            let unblock = NoRulesOnDrop(&jobs);
            let chains = dump_objects(sock, buf, chains_seq, (Msg::GetChain, fam), name, decode_chain);
            let rule_jobs: Vec<Option<String>> = match &chains {
                Ok(chains)
                    if !whole_table_rules.unwrap_or_else(|| whole_table_rule_dump(chains.len(), dynamic_sets)) =>
                {
                    chains.iter().map(|c| Some(c.name.clone())).collect()
                }
                Ok(_) => vec![None],
                Err(_) => Vec::new(),
            };
            jobs.publish_rules(rule_jobs);
            drop(unblock);
            let mine = (|| {
                let (mut req, mut part) = (Vec::new(), Part::default());
                jobs.run_rules(sock, buf, &mut req, &mut part)?;
                jobs.run_elements(sock, buf, &mut req, &mut part)?;
                Ok(part)
            })();
            let parts: Vec<Result<Part<E>, Error>> =
                helpers.into_iter().map(|h| h.join().expect("a table reader panicked")).chain([mine]).collect();
            (chains, parts)
        });
        let chains = chains?;
        let published = jobs.rules.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_default();
        self.seq = jobs.seq.wrapping_add((jobs.elements.len() + published.len()) as u32);
        let mut by_job: Vec<Vec<Rule>> = vec![Vec::new(); published.len()];
        let mut read: Vec<Option<E>> = std::iter::repeat_with(|| None).take(sets.len()).collect();
        for part in parts {
            let part = part?;
            for (set, elements) in part.elements {
                read[set] = Some(elements);
            }
            for (i, rules) in part.rules {
                by_job[i] = rules;
            }
        }
        let rules = by_job.into_iter().flatten().collect();
        let sets = sets
            .into_iter()
            .zip(read)
            .map(|(set, read)| {
                let elements = read.unwrap_or_else(|| each(&set, Vec::new()));
                (set, elements)
            })
            .collect();
        Ok(Some(TableState { generation, table: Table { family, name: name.to_owned() }, chains, sets, rules }))
    }
}

#[cfg(test)]
mod tests {
    use super::whole_table_rule_dump;

    #[test]
    fn rules_come_in_one_dump_unless_session_affinity_makes_them_many() {
        // The examples; 10k services without session affinity (12k chains).
        assert!(whole_table_rule_dump(20, 4));
        assert!(whole_table_rule_dump(12_016, 0));
        // 10k services, 1 in 7 with affinity: 14,290 dynamic sets, 48k rules.
        assert!(!whole_table_rule_dump(12_016, 14_290));
    }
}
