// `init` must be a `fn()`: the type error lands on the path the user wrote.
fn setup(verbose: bool) {
    let _ = verbose;
}

#[hotexec::main(init = setup)]
fn main() {}
