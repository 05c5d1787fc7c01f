//! Unit tests of the hand-off, both ends in one process over a real socketpair.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// A connected pair on 127.0.0.1: (client, server side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn both_ends(deadline: Duration) -> (Handoff, HandedOff) {
    let (old, new) = channel::pair().unwrap();
    let rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
    let tx = Handoff::start(old, 4242, Instant::now() + deadline).unwrap();
    (tx, rx)
}

/// A connection, its unread bytes and its state arrive whole; after the ACK the old side's
/// copy is closed and the new side alone serves the client.
#[test]
fn a_connection_moves_with_its_bytes_and_state() {
    let (tx, mut rx) = both_ends(Duration::from_secs(30));
    let (mut client, server) = tcp_pair();
    let taker = std::thread::spawn(move || {
        let conn = rx.recv_blocking().unwrap().unwrap();
        assert_eq!(conn.family, Family::Tcp);
        let (mut s, unread, state) = conn.into_tcp().unwrap();
        assert_eq!(unread, b"half a li");
        assert_eq!(state, b"count=3");
        s.write_all(b"from the new side\n").unwrap();
        s
    });
    tx.send_blocking(server, b"half a li".to_vec(), b"count=3".to_vec())
        .unwrap();
    assert_eq!(tx.handed_off(), 1);
    let kept = taker.join().unwrap();
    let mut buf = [0u8; 18];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the new side\n");
    // The new side's copy is the only one left: closing it ends the connection.
    drop(kept);
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

/// The new side goes away before it took (acknowledged) the connection: it comes back whole,
/// still connected to its client.
#[test]
fn unacknowledged_connections_come_back_when_the_new_side_goes() {
    let (tx, rx) = both_ends(Duration::from_secs(30));
    let (mut client, server) = tcp_pair();
    // Dropping the receiver refuses what it holds and what comes.
    drop(rx);
    let tx2 = tx.clone();
    let sender =
        std::thread::spawn(move || tx2.send_blocking(server, b"u".to_vec(), b"s".to_vec()));
    let back = sender.join().unwrap().unwrap_err();
    assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
    let (mut s, unread, state) = back.into_tcp();
    assert_eq!(
        (unread.as_slice(), state.as_slice()),
        (&b"u"[..], &b"s"[..])
    );
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

/// The deadline passes with the new side never taking anything: everything comes back.
#[test]
fn the_deadline_gives_back_what_was_not_taken() {
    let (old, new) = channel::pair().unwrap();
    let _rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
    let tx = Handoff::start(old, 1, Instant::now() + Duration::from_millis(300)).unwrap();
    let (_c, s) = tcp_pair();
    let back = tx.send_blocking(s, Vec::new(), Vec::new()).unwrap_err();
    assert!(
        matches!(
            back.error,
            HandoffError::Refused(_) | HandoffError::Deadline
        ),
        "{back:?}"
    );
    // After the deadline nothing more is taken.
    let (_c2, s2) = tcp_pair();
    assert!(tx.send_blocking(s2, Vec::new(), Vec::new()).is_err());
}

/// A new generation whose application never asks for hand-offs gives what it was offered
/// back once the claim grace is over, not only at the old side's deadline.
#[test]
fn an_application_that_does_not_receive_refuses_after_the_grace() {
    let (old, new) = channel::pair().unwrap();
    let _unclaimed = recv::start(new).unwrap();
    let tx = Handoff::start(old, 7, Instant::now() + Duration::from_secs(60)).unwrap();
    let (_c, s) = tcp_pair();
    let back = tx.send_blocking(s, Vec::new(), Vec::new()).unwrap_err();
    assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
    assert!(
        back.to_string().contains("does not take hand-offs"),
        "{back}"
    );
}

/// Over-size unread bytes or state are refused before anything is sent.
#[test]
fn over_size_payloads_are_refused_up_front() {
    let (tx, _rx) = both_ends(Duration::from_secs(30));
    let (_c, s) = tcp_pair();
    let back = tx
        .send_blocking(s, vec![0; MAX_UNREAD + 1], Vec::new())
        .unwrap_err();
    assert!(matches!(back.error, HandoffError::TooLarge(_)));
    assert!(back.to_string().contains("unread bytes"), "{back}");
}

/// A pipe, a listener, and a socket nobody connected are refused on receipt, each with a
/// message saying what it is; the sender gets it back.
#[test]
fn fds_that_are_not_connections_are_refused() {
    let (tx, mut rx) = both_ends(Duration::from_secs(30));
    let (pr, _pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fds: Vec<(OwnedFd, &str)> = vec![
        (pr, "not a socket"),
        (listener.into(), "listening socket"),
        (udp.into(), "not a SOCK_STREAM"),
    ];
    for (fd, needle) in fds {
        let back = tx.send_blocking(fd, Vec::new(), Vec::new()).unwrap_err();
        assert!(back.to_string().contains(needle), "{needle:?}: {back}");
        let e = rx.recv_blocking().unwrap().unwrap_err();
        assert!(e.to_string().contains(needle), "{needle:?}: {e}");
    }
}

#[cfg(test)]
mod garbage_tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// Garbage with a connection attached: the channel is given up and the connection is not
    /// kept (its client sees it closed once the sender closes its copy).
    #[test]
    fn nothing_is_kept_from_garbage() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let s: OwnedFd = l.accept().unwrap().0.into();
        let (pr, _pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        channel::send(
            old.as_fd(),
            &wire::encode(Kind::Conn, 1, b"", b""),
            Some(pr.as_fd()),
            false,
        )
        .unwrap();
        assert!(rx.recv_blocking().unwrap().is_err());
        channel::send(
            old.as_fd(),
            b"GET / HTTP/1.1\r\n\r\n garbage",
            Some(s.as_fd()),
            false,
        )
        .unwrap();
        let e = rx.recv_blocking().unwrap().unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        assert!(rx.recv_blocking().is_none());
        drop(s);
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V1 {
        user: String,
        seq: u64,
    }

    /// A later build's state type with a field more (defaulted) reads the earlier one's state.
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct V2 {
        user: String,
        seq: u64,
        #[serde(default)]
        room: Option<String>,
    }

    #[test]
    fn state_travels_as_a_serde_type_and_reads_in_a_later_shape() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let tx = Handoff::start(old, 1, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let taker = std::thread::spawn(move || rx.recv_blocking().unwrap().unwrap());
        let state = V1 {
            user: "ada".into(),
            seq: 41,
        };
        let fut = tx.send_serde(s, Vec::new(), &state);
        let conn = taker.join().unwrap();
        assert_eq!(conn.state_as::<V1>().unwrap(), state);
        assert_eq!(
            conn.state_as::<V2>().unwrap(),
            V2 {
                user: "ada".into(),
                seq: 41,
                room: None
            }
        );
        let e = conn.state_as::<u64>().unwrap_err();
        assert!(e.to_string().contains("cannot read the state"), "{e}");
        drop(fut);
    }
}

#[cfg(test)]
mod broken_peer_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Garbage from the new side is skipped, not taken as an answer: the connection it was
    /// sent stays unanswered (no second owner) until the new side answers it or closes.
    #[test]
    fn garbage_from_the_new_side_is_not_an_answer() {
        let (old, new) = channel::pair().unwrap();
        let tx = Handoff::start(old, 9, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let sender = std::thread::spawn(move || tx.send_blocking(s, b"u".to_vec(), Vec::new()));
        // Act as a broken new side: read the CONN, answer garbage, then close.
        let got = match channel::recv(new.as_fd(), false).unwrap() {
            channel::Received::Message { bytes, .. } => bytes,
            channel::Received::Eof => panic!("closed"),
        };
        let rec = wire::decode(&got, 1).unwrap();
        assert_eq!(rec.kind, Kind::Conn);
        channel::send(new.as_fd(), b"not a record at all", None, false).unwrap();
        channel::send(
            new.as_fd(),
            &wire::encode(Kind::Ack, 999, b"", b""),
            None,
            false,
        )
        .unwrap();
        // The old side shut the channel for writing: EOF here.
        assert!(matches!(
            channel::recv(new.as_fd(), false).unwrap(),
            channel::Received::Eof
        ));
        assert!(!sender.is_finished(), "garbage was taken as an answer");
        // Closing without answering (as a dead new side would): it comes back whole.
        drop(new);
        let back = sender.join().unwrap().unwrap_err();
        assert_eq!(back.unread, b"u");
        assert!(matches!(back.error, HandoffError::Closed(_)), "{back:?}");
    }
}

/// What a broken or hostile new generation can do to the old side's books: whatever it sends,
/// a connection it acknowledged is never given back (that would make two owners).
#[cfg(test)]
mod one_owner_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// `n` connected pairs: (clients, server sides).
    fn conns(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        let servers = (0..n).map(|_| l.accept().unwrap().0).collect();
        (clients, servers)
    }

    /// Plays the new generation: reads `n` CONN records, returns their ids (their fds are kept
    /// open, as a new generation that took them would).
    fn read_conns(chan: &OwnedFd, n: usize) -> (Vec<u64>, Vec<OwnedFd>) {
        let (mut ids, mut kept) = (Vec::new(), Vec::new());
        while ids.len() < n {
            match channel::recv(chan.as_fd(), false).unwrap() {
                channel::Received::Message { bytes, fds, .. } => {
                    let r = wire::decode(&bytes, fds.len()).unwrap();
                    assert_eq!(r.kind, Kind::Conn);
                    ids.push(r.id);
                    kept.extend(fds);
                }
                channel::Received::Eof => panic!("the old side closed the channel"),
            }
        }
        (ids, kept)
    }

    /// An answer; a send that fails (the old side already gave up the channel) is for the
    /// assertions on the old side's outcomes to report.
    fn answer(chan: &OwnedFd, kind: Kind, id: u64) {
        let _ = channel::send(chan.as_fd(), &wire::encode(kind, id, b"", b""), None, false);
    }

    /// Finding 2 of issue 20: SEQPACKET allows a record of 0 bytes, which `recv` returns just
    /// like the end of the channel. A new generation that sends one between two ACKs must not
    /// make the old side give back the connection of the second ACK.
    #[test]
    fn an_empty_record_is_not_the_end_of_the_channel() {
        let (old, new) = channel::pair().unwrap();
        let tx = Handoff::start(old, 9, Instant::now() + Duration::from_secs(30)).unwrap();
        let (_clients, servers) = conns(2);
        let sends: Vec<_> = servers
            .into_iter()
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || tx.send_blocking(s, Vec::new(), Vec::new()))
            })
            .collect();
        let (ids, _kept) = read_conns(&new, 2);
        answer(&new, Kind::Ack, ids[0]);
        channel::send(new.as_fd(), b"", None, false).unwrap();
        answer(&new, Kind::Ack, ids[1]);
        for s in sends {
            let r = s.join().unwrap();
            assert!(r.is_ok(), "an acknowledged connection came back: {r:?}");
        }
        assert_eq!(tx.handed_off(), 2);
    }

    /// The same on the new side: an empty record from the old side is a protocol error, named
    /// as such, not the end of the hand-off.
    #[test]
    fn an_empty_record_from_the_old_side_is_refused_by_name() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        channel::send(old.as_fd(), b"", None, false).unwrap();
        let e = rx
            .recv_blocking()
            .expect("an error, not the end")
            .unwrap_err();
        assert!(e.to_string().contains("an empty record"), "{e}");
    }

    /// Finding 4 of issue 20: an application that claims the hand-off stream later than
    /// `CLAIM_GRACE` after `main` started (a warm-up before `ready()`) takes what is offered
    /// from then on; the grace refuses only offers that waited for a claim that did not come.
    #[test]
    fn incoming_claimed_after_the_grace_still_takes_what_comes() {
        let (old, new) = channel::pair().unwrap();
        let long_ago = Instant::now()
            .checked_sub(CLAIM_GRACE + Duration::from_secs(1))
            .unwrap();
        let shared = recv::start_at(new, long_ago).unwrap();
        // The reader has looked at the grace with nothing offered yet.
        std::thread::sleep(Duration::from_millis(100));
        let mut rx = recv::claim(&shared, Claim::All).unwrap();
        let tx = Handoff::start(old, 5, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let taker = std::thread::spawn(move || rx.recv_blocking().map(|r| r.map(|_| ())));
        let sent = tx.send_blocking(s, Vec::new(), Vec::new());
        assert!(
            sent.is_ok(),
            "refused though the application receives: {sent:?}"
        );
        assert!(matches!(taker.join().unwrap(), Some(Ok(()))));
    }

    /// Finding 5 of issue 20: converting an acknowledged connection that is not TCP into a
    /// tokio `TcpStream` fails, and must give the connection back, not close it (it is this
    /// generation's alone: nobody else can serve it any more).
    #[cfg(feature = "tokio")]
    #[test]
    fn a_connection_of_the_wrong_kind_is_given_back_not_dropped() {
        use std::io::Read;
        let (ours, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = Connection {
            fd: ours.into(),
            family: Family::Unix,
            unread: b"u".to_vec(),
            state: b"s".to_vec(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_rt = rt.enter();
        let kept = conn.into_tokio_tcp();
        assert!(kept.is_err(), "a Unix connection is not a TcpStream");
        client.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let e = client.read(&mut b).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "the connection was closed by the failed conversion"
        );
        drop(kept);
    }

    /// Two listeners, two protocols: each receiver claims its own listener's connections; one
    /// that no receiver claims is refused (and stays with the previous generation), not taken by
    /// the code of another protocol.
    #[test]
    fn each_receiver_takes_its_own_listeners_connections() {
        let (old, new) = channel::pair().unwrap();
        let shared = recv::start_at(new, Instant::now().checked_sub(CLAIM_GRACE).unwrap()).unwrap();
        let (la, lb) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (pa, pb) = (
            la.local_addr().unwrap().port(),
            lb.local_addr().unwrap().port(),
        );
        let mut rx_a = recv::claim(&shared, Claim::TcpPort(pa)).unwrap();
        assert!(
            recv::claim(&shared, Claim::TcpPort(pa)).is_none(),
            "claimed twice"
        );
        assert!(recv::claim(&shared, Claim::All).is_none(), "overlaps");
        let tx = Handoff::start(old, 3, Instant::now() + Duration::from_secs(30)).unwrap();
        let _ca = TcpStream::connect(la.local_addr().unwrap()).unwrap();
        let _cb = TcpStream::connect(lb.local_addr().unwrap()).unwrap();
        let (sa, sb) = (la.accept().unwrap().0, lb.accept().unwrap().0);
        let tb = tx.clone();
        let for_b = std::thread::spawn(move || tb.send_blocking(sb, Vec::new(), b"b".to_vec()));
        let ta = tx.clone();
        let for_a = std::thread::spawn(move || ta.send_blocking(sa, Vec::new(), b"a".to_vec()));
        let got = rx_a.recv_blocking().unwrap().unwrap();
        assert_eq!(
            (got.state.as_slice(), got.local_port()),
            (&b"a"[..], Some(pa))
        );
        assert!(for_a.join().unwrap().is_ok());
        let back = for_b.join().unwrap().unwrap_err();
        assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
        assert_eq!(back.state, b"b");
        // The other listener's connections can still be claimed (by its own receiver).
        assert!(recv::claim(&shared, Claim::TcpPort(pb)).is_some());
    }
}
