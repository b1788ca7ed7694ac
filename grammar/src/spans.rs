//! Walking the spans of an item, to make them relative to its start.

use crate::{
    ClusterStmt, EndpointOption, EndpointsStmt, Item, ItemKind, NodeStmt, PortOption, ServiceStmt, Span, Stmt, Word,
};

/// Calls `f` on every span inside `item`: all but the item's own.
pub(crate) fn for_each_inner_span<F: FnMut(&mut Span)>(item: &mut Item, f: &mut F) {
    f(&mut item.keyword);
    match &mut item.kind {
        ItemKind::Cluster(body) => statements(body, f, |kind, f: &mut F| match kind {
            ClusterStmt::ClusterCidr(ws) | ClusterStmt::ServiceCidr(ws) | ClusterStmt::NodePortAddresses(ws) => {
                words(ws, f)
            }
            ClusterStmt::NodePortRange(w) | ClusterStmt::MasqueradeAll(w) => f(&mut w.span),
        }),
        ItemKind::Node { name, body } => {
            f(&mut name.span);
            statements(body, f, |kind, f: &mut F| match kind {
                NodeStmt::Address(ws) | NodeStmt::LocalAddress(ws) | NodeStmt::PodCidr(ws) => words(ws, f),
                NodeStmt::Zone(w) => f(&mut w.span),
            });
        }
        ItemKind::Service { name, body } => {
            f(&mut name.span);
            f(&mut name.namespace.span);
            f(&mut name.name.span);
            statements(body, f, service_spans);
        }
        ItemKind::Endpoints { name, body } => {
            f(&mut name.span);
            f(&mut name.namespace.span);
            f(&mut name.name.span);
            statements(body, f, endpoints_spans);
        }
    }
}

fn statements<T, F: FnMut(&mut Span)>(body: &mut [Stmt<T>], f: &mut F, kind: impl Fn(&mut T, &mut F)) {
    for stmt in body {
        f(&mut stmt.keyword);
        f(&mut stmt.span);
        kind(&mut stmt.kind, f);
    }
}

fn words<F: FnMut(&mut Span)>(ws: &mut [Word], f: &mut F) {
    ws.iter_mut().for_each(|w| f(&mut w.span));
}

fn service_spans<F: FnMut(&mut Span)>(kind: &mut ServiceStmt, f: &mut F) {
    match kind {
        ServiceStmt::ClusterIp(ws) | ServiceStmt::ExternalIp(ws) | ServiceStmt::SourceRanges(ws) => words(ws, f),
        ServiceStmt::Type(w)
        | ServiceStmt::ExternalTrafficPolicy(w)
        | ServiceStmt::InternalTrafficPolicy(w)
        | ServiceStmt::HealthCheckNodePort(w)
        | ServiceStmt::TrafficDistribution(w) => f(&mut w.span),
        ServiceStmt::LoadBalancerIp { address, mode } => {
            f(&mut address.span);
            mode.iter_mut().for_each(|w| f(&mut w.span));
        }
        ServiceStmt::SessionAffinity { mode, timeout } => {
            f(&mut mode.span);
            timeout.iter_mut().for_each(|w| f(&mut w.span));
        }
        ServiceStmt::Port(p) => {
            p.name.iter_mut().for_each(|w| f(&mut w.span));
            f(&mut p.port.span);
            f(&mut p.protocol.span);
            for option in &mut p.options {
                let (PortOption::Target(w) | PortOption::NodePort(w)) = option;
                f(&mut w.span);
            }
        }
    }
}

fn endpoints_spans<F: FnMut(&mut Span)>(kind: &mut EndpointsStmt, f: &mut F) {
    match kind {
        EndpointsStmt::Port { name, port } => {
            name.iter_mut().for_each(|w| f(&mut w.span));
            f(&mut port.span);
        }
        EndpointsStmt::Endpoint(e) => {
            f(&mut e.address.span);
            for option in &mut e.options {
                match option {
                    EndpointOption::Node(w) | EndpointOption::Zone(w) | EndpointOption::Condition(w) => f(&mut w.span),
                    EndpointOption::HintZones(ws) | EndpointOption::HintNodes(ws) => words(ws, f),
                }
            }
        }
    }
}
