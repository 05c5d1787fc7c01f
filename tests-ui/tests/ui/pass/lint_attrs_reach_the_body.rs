#![deny(warnings)]

// An `#[allow]` written on `main` covers its body, and the generated code itself adds no warning
// (the file denies all of them).
#[hotexec::main]
#[listen("127.0.0.1:0")]
#[allow(unused_variables)]
fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) {
    let unused = 1;
}
