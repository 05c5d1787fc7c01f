#![deny(warnings)]

use std::error::Error;

// The return type is passed through, and `?` / `return` inside the body behave as written: the
// body is kept as a function of its own.
#[hotexec::main]
fn main(shutdown: hotexec::Shutdown) -> Result<(), Box<dyn Error>> {
    let _ = shutdown;
    let n: u32 = "42".parse()?;
    if n == 42 {
        return Ok(());
    }
    Err("`return` did not leave main".into())
}
