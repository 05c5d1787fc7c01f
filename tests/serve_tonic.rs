//! The tonic example (tonic's `Routes` served with `hotexec::serve`) loses no gRPC call across
//! upgrades: unary calls under load from clients that keep their HTTP/2 connection (and
//! reconnect after a `GOAWAY`), and server-streaming calls in flight at each hand-over, which
//! must finish on the generation that started them. Every call is counted.
//!
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_tonic -- --nocapture` runs the same
//! scenario against the example's plain mode (tonic's own `serve_with_incoming_shutdown`) and
//! prints what it loses instead of asserting zero.
#[path = "../examples/support/grpc.rs"]
mod grpc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use grpc::GreeterClient;
use hotexec_testkit::prelude::*;

const GRPC: &str = "HOTEXEC_LISTEN_GRPC";
const UPGRADES: usize = 4;
/// Unary clients, each on its own HTTP/2 connection.
const UNARY_CLIENTS: usize = 8;
/// Unary clients making a new connection for every call.
const NEW_CONN_CLIENTS: usize = 4;
/// Streams started before each upgrade, each on a new connection.
const STREAMS: usize = 4;
/// Replies per stream, and the pause between two: a stream outlives the hand-over by ~1 s.
const STREAM_COUNT: u32 = 12;
const STREAM_INTERVAL_MS: u32 = 100;
/// One call's limit (a call that takes longer counts as failed, `Timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How one call ended: answered by a pid, or failed with a class (gRPC code) and a detail.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Ok(u32),
    Failed { class: String, detail: String },
}

impl Call {
    /// The class is the gRPC code; the detail the message and its error sources (what the
    /// transport saw: a reset, a `GOAWAY`, a refused stream).
    fn from_status(s: &tonic::Status) -> Call {
        let mut detail = s.message().to_string();
        let mut source = std::error::Error::source(s);
        while let Some(e) = source {
            detail.push_str(&format!(": {e}"));
            source = e.source();
        }
        Call::Failed {
            class: format!("{:?}", s.code()),
            detail,
        }
    }

    fn timeout() -> Call {
        Call::Failed {
            class: "Timeout".into(),
            detail: format!("no answer within {CALL_TIMEOUT:?}"),
        }
    }
}

/// True when the protocol proves the call never reached the server's application, so a client
/// may send it again:
///
/// - it never left the client: hyper canceled it (its connection was gone before it was
///   written), or h2 refused to open its stream because the connection had received a `GOAWAY`
///   (h2 then returns the `GOAWAY`'s own error, remote, `NO_ERROR`);
/// - or it did, above the last stream id of the final `GOAWAY`, which the server guarantees it
///   never processed (RFC 9113 §6.8: such streams "can be safely retried"). With the two-step
///   `GOAWAY` this is rare: a stream whose `HEADERS` h2 had queued when it wrote the `PING` ack
///   first (see tests/serve_h2.rs).
///
/// tonic's `Channel` resends neither (its caller gets `Internal: h2 protocol error` or
/// `Cancelled`); gRPC's own clients do ("transparent retry", gRFC A6). The test sends them
/// again and counts them apart. Any other error is a failed call: a reset, an EOF, a stream cut
/// after the server took it.
fn unprocessed(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// One `SayHello`, sent again (at most 3 times) only when the server provably never processed
/// it ([`unprocessed`]); returns the call's end and how many times it was sent again.
async fn say_hello(client: &mut GreeterClient) -> (Call, usize) {
    let mut resent = 0;
    loop {
        let c = match tokio::time::timeout(CALL_TIMEOUT, client.say_hello("load")).await {
            Ok(Ok(r)) if r.message == format!("pid={} hello load", r.pid) => Call::Ok(r.pid),
            Ok(Ok(r)) => Call::Failed {
                class: "BadReply".into(),
                detail: format!("{r:?}"),
            },
            Ok(Err(s)) if unprocessed(&s) && resent < 3 => {
                resent += 1;
                continue;
            }
            Ok(Err(s)) => Call::from_status(&s),
            Err(_) => Call::timeout(),
        };
        return (c, resent);
    }
}

/// A stream's result: its replies' pids in order, and how it ended.
#[derive(Debug)]
struct StreamRun {
    pids: Vec<u32>,
    end: Call,
}

/// Opens a stream on a new connection; sends its first reply's pid on `first` once it came.
async fn run_stream(
    addr: std::net::SocketAddr,
    first: tokio::sync::oneshot::Sender<u32>,
) -> StreamRun {
    let mut client = GreeterClient::lazy(addr);
    let mut pids = Vec::new();
    let mut first = Some(first);
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    let run = async {
        let mut stream = client
            .say_hello_stream("stream", STREAM_COUNT, STREAM_INTERVAL_MS)
            .await?;
        while let Some(r) = stream.message().await? {
            if let Some(tx) = first.take() {
                let _ = tx.send(r.pid);
            }
            pids.push(r.pid);
        }
        Ok::<(), tonic::Status>(())
    };
    let end = match tokio::time::timeout_at(deadline, run).await {
        Ok(Ok(())) => match pids.first() {
            Some(&p) => Call::Ok(p),
            None => Call::Failed {
                class: "Empty".into(),
                detail: "the stream ended without a reply".into(),
            },
        },
        Ok(Err(s)) => Call::from_status(&s),
        Err(_) => Call::timeout(),
    };
    StreamRun { pids, end }
}

fn start_tonic() -> App {
    if compare_plain() {
        App::start("tonic", GRPC, &[("TONIC_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("tonic", GRPC, &[])
    }
}

/// Failed calls by class and detail (`Unavailable "error trying to connect…": 3`).
fn classes<'a>(calls: impl IntoIterator<Item = &'a Call>) -> String {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        if let Call::Failed { class, detail } = c {
            let mut detail = detail.clone();
            detail.truncate(160);
            *m.entry(format!("{class} {detail:?}")).or_default() += 1;
        }
    }
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The unary load: clients calling `SayHello` until stopped, each on its own long-lived
/// connection (`fresh == false`: reconnecting only after the server sent it away) or on a new
/// connection per call (`fresh == true`). Every call's (completion time, end, times re-sent).
fn unary_load(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    clients: usize,
    fresh: bool,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(Instant, Call, usize)>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            rt.spawn(async move {
                let mut client = GreeterClient::lazy(addr);
                let mut out = Vec::new();
                // Bounded in count and time whatever happens.
                let hard_stop = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed)
                    && out.len() < 1_000_000
                    && Instant::now() < hard_stop
                {
                    if fresh {
                        client = GreeterClient::lazy(addr);
                    }
                    let (c, resent) = say_hello(&mut client).await;
                    out.push((Instant::now(), c, resent));
                }
                out
            })
        })
        .collect()
}

fn collect(
    rt: &tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Instant, Call, usize)>>>,
) -> Vec<(Instant, Call, usize)> {
    let mut all: Vec<_> = tasks
        .into_iter()
        .flat_map(|t| rt.block_on(t).unwrap())
        .collect();
    all.sort_by_key(|(t, _, _)| *t);
    all
}

fn mode() -> &'static str {
    if compare_plain() {
        "PLAIN (integration off: tonic's serve_with_incoming_shutdown)"
    } else {
        "with the integration"
    }
}

/// Prints a unary load's figures; returns its failed calls.
fn unary_figures<'a>(what: &str, calls: &'a [(Instant, Call, usize)]) -> Vec<&'a Call> {
    let failed: Vec<&Call> = calls
        .iter()
        .map(|(_, c, _)| c)
        .filter(|c| !matches!(c, Call::Ok(_)))
        .collect();
    let resent: usize = calls.iter().map(|(_, _, r)| r).sum();
    eprintln!(
        "FIGURES tonic, unary, {what} [{}]: {} calls, {} failed ({}); {resent} sent again \
         because the server refused them unprocessed (GOAWAY) or they never left the client",
        mode(),
        calls.len(),
        failed.len(),
        classes(failed.iter().copied())
    );
    failed
}

#[test]
fn unary_and_streaming_calls_lose_nothing_across_upgrades() {
    let mut app = start_tonic();
    let addr = app.addr;
    let first_pid = app.first_pid();
    let rt = runtime();

    let stop = Arc::new(AtomicBool::new(false));
    let kept = unary_load(&rt, addr, UNARY_CLIENTS, false, &stop);
    let fresh = unary_load(&rt, addr, NEW_CONN_CLIENTS, true, &stop);

    let mut streams = Vec::new();
    let mut probes = Vec::new();
    let mut news = Vec::new();
    let mut serving = first_pid;
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..UPGRADES {
        // Streams in flight at the hand-over: each has had its first reply before the signal.
        let mut round_streams = Vec::new();
        for _ in 0..STREAMS {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = rt.spawn(run_stream(addr, tx));
            let first = rt
                .block_on(async { tokio::time::timeout(CALL_TIMEOUT, rx).await })
                .unwrap_or_else(|_| {
                    panic!("round {round}: no first stream reply within {CALL_TIMEOUT:?}")
                })
                .ok();
            round_streams.push((first, task));
        }
        let (old, new) = app.upgrade();
        assert_eq!(
            old, serving,
            "round {round}: the upgrade signal went to the serving pid"
        );
        news.push(new);

        // New calls reach the new generation (polled on new connections: a connection made
        // in the moment before the old one stops accepting is still served by the old one).
        let deadline = Instant::now() + Duration::from_secs(10);
        rt.block_on(async {
            loop {
                let (c, resent) = say_hello(&mut GreeterClient::lazy(addr)).await;
                let done = c == Call::Ok(new);
                probes.push((Instant::now(), c, resent));
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no answer from the new pid {new}; calls: {probes:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });

        for (first, task) in round_streams {
            let run = rt.block_on(task).unwrap();
            streams.push((round, old, first, run));
        }
        // The old generation exits by itself, cleanly, once its streams are done.
        let st = app.wait_exit(old, Duration::from_secs(20));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
        serving = new;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let kept = collect(&rt, kept);
    let fresh = collect(&rt, fresh);

    let mut failed = unary_figures("connection kept (reconnecting after GOAWAY)", &kept);
    failed.extend(unary_figures("new connection per call", &fresh));
    failed.extend(unary_figures("new-generation probes", &probes));
    // A stream is complete when it got every reply, all from the generation it started on,
    // the one that was serving when it started, and ended with status OK.
    let broken: Vec<String> = streams
        .iter()
        .filter(|(_, old, first, run)| {
            run.end != Call::Ok(*old)
                || *first != Some(*old)
                || run.pids.len() != STREAM_COUNT as usize
                || run.pids.iter().any(|p| p != old)
        })
        .map(|(round, old, _, run)| format!("round {round} (old pid {old}): {run:?}"))
        .collect();
    let stream_ends: Vec<&Call> = streams.iter().map(|(_, _, _, r)| &r.end).collect();
    eprintln!(
        "FIGURES tonic, server streaming across the upgrade [{}]: {} streams of {STREAM_COUNT} \
         replies, {} incomplete ({})",
        mode(),
        streams.len(),
        broken.len(),
        classes(stream_ends.iter().copied())
    );
    for b in &broken {
        eprintln!("  incomplete stream: {b}");
    }

    assert!(kept.len() >= 200, "only {} unary calls", kept.len());
    assert!(
        fresh.len() >= 50,
        "only {} new-connection calls",
        fresh.len()
    );
    for new in &news {
        assert!(
            kept.iter().any(|(_, c, _)| *c == Call::Ok(*new)),
            "the unary clients never reached generation {new}"
        );
    }
    if compare_plain() {
        return;
    }
    assert!(
        failed.is_empty(),
        "{} unary calls failed: {}",
        failed.len(),
        classes(failed.iter().copied())
    );
    assert!(broken.is_empty(), "incomplete streams: {broken:#?}");
    // The last calls were answered by the last generation.
    let last = *news.last().unwrap();
    assert!(
        kept.iter()
            .rev()
            .take(UNARY_CLIENTS)
            .all(|(_, c, _)| *c == Call::Ok(last)),
        "the last unary calls were not answered by the last generation {last}"
    );
}
