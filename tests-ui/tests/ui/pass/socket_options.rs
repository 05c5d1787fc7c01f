#![deny(warnings)]

// Every socket option on the kind it applies to; the body checks the one it can see from here
// (the Unix socket's permission bits, set before `listen`).
#[hotexec::main]
#[listen("[::1]:0", name = "v6", v6only = false, backlog = 64)]
#[listen("udp:127.0.0.1:0", name = "dns", reuseport = true)]
#[listen("tcp:127.0.0.1:0", name = "web", reuseport = false)]
#[listen("unix:/tmp/hotexec-ui-socket-options.sock", name = "admin", mode = 0o600)]
fn main(listeners: hotexec::Listeners) {
    use std::os::unix::fs::PermissionsExt;
    let admin = listeners.take_unix("admin").unwrap();
    let path = admin.local_addr().unwrap().as_pathname().unwrap().to_owned();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{path:?}");
    assert!(listeners.take_udp("dns").is_ok());
}
