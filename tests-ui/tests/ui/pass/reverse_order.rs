#![deny(warnings)]

use hotexec::{Listeners, Shutdown};

// Parameters in either order, named by their last path segment only; `current_thread` flavor.
#[hotexec::main(flavor = "current_thread")]
#[listen("127.0.0.1:0")]
async fn main(shutdown: Shutdown, listeners: Listeners) {
    let _: (Shutdown, Listeners) = (shutdown, listeners);
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
}
