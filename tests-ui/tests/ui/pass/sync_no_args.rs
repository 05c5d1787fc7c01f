#![deny(warnings)]

// The smallest use: a sync `main` that takes nothing and returns `()`.
#[hotexec::main]
fn main() {
    let answer = 6 * 7;
    assert_eq!(answer, 42);
}
