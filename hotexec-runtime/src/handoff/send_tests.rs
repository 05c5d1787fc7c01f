//! Unit tests of the sending side: what a broken or hostile channel does to ownership.
use super::*;
use std::net::{TcpListener, TcpStream};

/// `n` connections handed to `tx`, with their clients and outcomes.
fn offer(tx: &Handoff, n: usize) -> (Vec<TcpStream>, Vec<SendFuture>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..n {
        clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        outcomes.push(tx.send(l.accept().unwrap().0, Vec::new(), Vec::new()));
    }
    (clients, outcomes)
}

/// Plays the new generation: reads `n` CONN records; their ids and fds.
fn take(chan: &OwnedFd, n: usize) -> (Vec<u64>, Vec<OwnedFd>) {
    let (mut ids, mut fds) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let Ok(Received::Message { bytes, fds: f, .. }) = channel::recv(chan.as_fd(), true) else {
            panic!("no CONN record queued");
        };
        ids.push(wire::decode(&bytes, f.len()).unwrap().id);
        fds.extend(f);
    }
    (ids, fds)
}

fn ack(chan: &OwnedFd, id: u64) {
    channel::send(
        chan.as_fd(),
        &wire::encode(Kind::Ack, id, b"", b""),
        None,
        false,
    )
    .unwrap();
}

/// Steps the sender until the channel is over, then ends it; bounded.
fn run_out(mut sender: Sender) -> HandoffError {
    for _ in 0..100 {
        if let Some(why) = sender.step() {
            sender.end(why.clone());
            return why;
        }
    }
    panic!("the channel never ended");
}

fn outcome(f: &SendFuture) -> Option<Result<(), HandoffError>> {
    let st = f.slot.state.lock().unwrap();
    st.0.as_ref()
        .map(|r| r.as_ref().map(|_| ()).map_err(|b| b.error.clone()))
}

/// The new generation takes two of three connections, acknowledges them, and exits with
/// the third record unread: the kernel then reports ECONNRESET on the old side's next read,
/// before the two ACKs queued there.
#[test]
fn acks_queued_behind_a_reset_still_count() {
    let (old, new) = channel::pair().unwrap();
    let (tx, mut sender) =
        Handoff::parts(old, 7, Instant::now() + Duration::from_secs(30)).unwrap();
    let (_clients, outcomes) = offer(&tx, 3);
    sender.send_queued();
    let (ids, _taken) = take(&new, 2);
    for id in ids {
        ack(&new, id);
    }
    drop(new);
    let why = run_out(sender);
    assert!(matches!(why, HandoffError::Closed(_)), "{why:?}");
    let got: Vec<_> = outcomes.iter().map(outcome).collect();
    assert!(
        matches!(
            got.as_slice(),
            [
                Some(Ok(())),
                Some(Ok(())),
                Some(Err(HandoffError::Closed(_)))
            ]
        ),
        "acknowledged connections must stay the new generation's, the unread one comes back: {got:?}"
    );
    assert_eq!(tx.handed_off(), 2);
}

/// The new generation acknowledges what it took and shuts the channel (as it does when it
/// gives up), while the old side has one more to send: that send fails with EPIPE, and
/// must not give back the two whose ACKs wait to be read.
#[test]
fn acks_queued_before_a_failed_send_still_count() {
    let (old, new) = channel::pair().unwrap();
    let (tx, mut sender) =
        Handoff::parts(old, 7, Instant::now() + Duration::from_secs(30)).unwrap();
    let (_clients, mut outcomes) = offer(&tx, 2);
    sender.send_queued();
    let (ids, _taken) = take(&new, 2);
    for id in ids {
        ack(&new, id);
    }
    rustix::net::shutdown(&new, rustix::net::Shutdown::Both).unwrap();
    let (_more_clients, more) = offer(&tx, 1);
    outcomes.extend(more);
    // Before the sender has read anything: it sends first.
    sender.send_queued();
    let why = run_out(sender);
    let got: Vec<_> = outcomes.iter().map(outcome).collect();
    assert!(
        matches!(
            got.as_slice(),
            [
                Some(Ok(())),
                Some(Ok(())),
                Some(Err(HandoffError::Closed(_)))
            ]
        ),
        "acknowledged connections must stay the new generation's ({why}): {got:?}"
    );
    drop(new);
}
