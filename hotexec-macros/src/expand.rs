//! What `#[hotexec::main]` and a stray `#[listen]` expand to.
//!
//! The generated code names only `::hotexec::__private::…`: the facade re-exports the runtime's
//! entry points there, and the facade pins this crate to its exact version, so the two cannot
//! drift apart.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ReturnType};

use crate::parse::{
    Errors, Flavor, Listener, MainArgs, MainFn, Param, Ready, check_signature, take_listeners,
};

/// `#[hotexec::main(args)] item`.
pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut input: MainFn = match syn::parse2(item.clone()) {
        Ok(input) => input,
        // rustc hands attribute macros only items that parse, so this is not a function: give
        // it back untouched, so that the rest of the file still resolves, and say why.
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("{e}: `#[hotexec::main]` goes on a function, e.g. `fn main()`"),
            );
            return with_error(item, e);
        }
    };
    let mut errors = Errors::default();
    // Every check runs even when an earlier one failed, so that all mistakes show at once; a
    // part that failed falls back to what is closest to the real expansion (default options, no
    // such listener), as tokio does, so that rust-analyzer keeps working inside `main`.
    let mut args = errors.ok(syn::parse2::<MainArgs>(args)).unwrap_or_default();
    errors.extend(std::mem::take(&mut args.errors));
    errors.ok(args.check_flavor(input.sig.asyncness));
    let listeners = take_listeners(&mut input.attrs, &mut errors);
    let params = errors.ok(check_signature(&input.sig));
    let expanded = match &params {
        Some(params) => expand_main(&input, &args, &listeners, params),
        None => expand_unusable_signature(&input),
    };
    match errors.finish() {
        Ok(()) => expanded,
        Err(e) => with_error(expanded, e),
    }
}

/// `#[listen(…)]` expanded on its own: it was not below a `#[hotexec::main]`, which would have
/// taken it away before it could expand.
pub(crate) fn listen_misplaced(item: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        "`#[listen]` must be placed below `#[hotexec::main]`: attributes expand from the top \
         down, and `#[hotexec::main]` reads and removes the `#[listen]`s under it; \
         move this attribute below `#[hotexec::main]`",
    );
    with_error(item, error)
}

fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

/// The user's function, renamed, as an item inside the generated one: `return`, `?` and every
/// span of the body behave exactly as written.
fn inner_fn(input: &MainFn) -> (Ident, TokenStream) {
    let ident = Ident::new("__hotexec_main", input.sig.ident.span());
    let mut sig = input.sig.clone();
    sig.ident = ident.clone();
    // The macro imposes this shape: `async` picks the runtime even if `main` only spawns, and
    // `Listeners`/`Shutdown` come by value. Lints about the shape are not the user's to fix.
    let mut tokens = quote!(#[allow(clippy::unused_async, clippy::needless_pass_by_value)]);
    sig.to_tokens(&mut tokens);
    input.brace_token.surround(&mut tokens, |body| {
        for attr in &input.inner_attrs {
            attr.to_tokens(body);
        }
        input.body.to_tokens(body);
    });
    (ident, tokens)
}

fn expand_main(
    input: &MainFn,
    args: &MainArgs,
    listeners: &[Listener],
    params: &[(Param, Span)],
) -> TokenStream {
    let MainFn {
        attrs, vis, sig, ..
    } = input;
    let ident = &sig.ident;
    let output = match &sig.output {
        ReturnType::Default => TokenStream::new(),
        ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
    };
    let (inner, inner_fn) = inner_fn(input);

    let init = args.init.as_ref().map(|path| {
        // Through a `fn()` binding, so that a function of another shape is a type error on the
        // path the user wrote.
        quote_spanned! {path.span()=>
            let __hotexec_init: fn() = #path;
            __hotexec_init();
        }
    });

    let mut options = TokenStream::new();
    if let Some(ms) = args.drain_timeout_ms {
        options.extend(quote!(.drain_timeout_ms(#ms)));
    }
    if let Some(ms) = args.ready_timeout_ms {
        options.extend(quote!(.ready_timeout_ms(#ms)));
    }
    if let Some(signal) = args.upgrade_signal {
        options.extend(quote!(.upgrade_signal(#signal)));
    }
    if let Some(path) = &args.pid_file {
        options.extend(quote!(.pid_file(#path)));
    }
    if args.ready == Ready::Manual {
        options.extend(quote!(.manual_ready()));
    }
    if args.keeper {
        options.extend(quote!(.keeper()));
    }
    if !args.health.is_empty() {
        let h = &args.health;
        let enabled = h.enabled.map(|b| quote!(.enabled(#b)));
        let probation = h.probation_ms.map(|(ms, _)| quote!(.probation_ms(#ms)));
        let max_probation = h
            .max_probation_ms
            .map(|(ms, _)| quote!(.max_probation_ms(#ms)));
        let rate = h.max_error_rate.map(|r| {
            let r = proc_macro2::Literal::f64_suffixed(r);
            quote!(.max_error_rate(#r))
        });
        let ratio = h.max_error_ratio.map(|r| {
            let r = proc_macro2::Literal::f64_suffixed(r);
            quote!(.max_error_ratio(#r))
        });
        let min_sample = h.min_sample.map(|n| quote!(.min_sample(#n)));
        options.extend(quote! {
            .health(::hotexec::__private::HealthSpec::new() #enabled #probation #max_probation #rate #ratio #min_sample)
        });
    }
    for Listener {
        name,
        addr,
        backlog,
        v6only,
        reuseport,
        mode,
    } in listeners
    {
        let backlog = backlog.map(|n| quote!(.backlog(#n)));
        let v6only = v6only.map(|b| quote!(.v6only(#b)));
        let reuseport = reuseport.map(|b| quote!(.reuseport(#b)));
        let mode = mode.map(|m| quote!(.mode(#m)));
        options.extend(quote! {
            .listen(::hotexec::__private::ListenSpec::new(#name, #addr) #backlog #v6only #reuseport #mode)
        });
    }

    // The closure's parameters, and the user's arguments in the user's order. An argument carries
    // the location of the parameter's type, so that a type named `Listeners` that is not
    // `hotexec::Listeners` is reported there.
    let listeners_arg = Ident::new("__hotexec_listeners", Span::call_site());
    let shutdown_arg = Ident::new("__hotexec_shutdown", Span::call_site());
    let call_args = params.iter().map(|(param, span)| {
        let arg = match param {
            Param::Listeners => &listeners_arg,
            Param::Shutdown => &shutdown_arg,
        };
        Ident::new(&arg.to_string(), arg.span().located_at(*span))
    });
    let call = quote_spanned!(ident.span()=> #inner(#(#call_args),*));

    let run_body = match &sig.asyncness {
        None => quote! {
            ::hotexec::__private::main_started();
            #call
        },
        Some(async_token) => {
            let (builder, worker_threads) = match args.flavor.map(|f| f.0).unwrap_or_default() {
                Flavor::MultiThread => (
                    quote!(new_multi_thread),
                    args.worker_threads
                        .map(|(n, _)| quote!(.worker_threads(#n))),
                ),
                Flavor::CurrentThread => (quote!(new_current_thread), None),
            };
            // Spanned on `async`: without the facade's `tokio` feature, this is where the error
            // shows.
            quote_spanned! {async_token.span()=>
                ::hotexec::__private::tokio::runtime::Builder::#builder()
                    #worker_threads
                    .enable_all()
                    .build()
                    .expect("hotexec: failed to build the tokio runtime")
                    .block_on(::hotexec::__private::Started::new(#call))
            }
        }
    };

    let note = note();
    quote! {
        #(#attrs)*
        #vis fn #ident() #output {
            #inner_fn
            #note
            #init
            ::hotexec::__private::Builder::new()
                #options
                .run(|#listeners_arg, #shutdown_arg| { #run_body })
        }
    }
}

/// The ELF note that says, without running the binary, which hotexec built it and which
/// hand-over protocols can start it (read by the preflight of every upgrade). In the app's own
/// crate, so that the linker keeps it: a `#[used]` static of a dependency is dropped with the
/// object file nothing references. `SHT_NOTE` and allocated, it survives `strip`.
fn note() -> TokenStream {
    let env = |var: &str| {
        quote! {
            match ::core::option_env!(#var) {
                ::core::option::Option::Some(v) => v,
                ::core::option::Option::None => "",
            }
        }
    };
    let (name, version, build) = (
        env("CARGO_PKG_NAME"),
        env("CARGO_PKG_VERSION"),
        env("HOTEXEC_BUILD_ID"),
    );
    quote! {
        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".note.hotexec")]
        static __HOTEXEC_NOTE: ::hotexec::__private::ElfNote =
            ::hotexec::__private::ElfNote::new(#name, #version, #build);
    }
}

/// When the signature cannot be called (unsupported parameters, generics, …) the error says
/// why; the user's function is still emitted, uncalled, so that its body is checked and
/// rust-analyzer keeps working in it, without errors that only the fallback would cause.
fn expand_unusable_signature(input: &MainFn) -> TokenStream {
    let MainFn {
        attrs, vis, sig, ..
    } = input;
    let ident = &sig.ident;
    let (_, inner_fn) = inner_fn(input);
    quote! {
        #(#attrs)*
        #vis fn #ident() {
            #[allow(dead_code)]
            #inner_fn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated code, as the runtime contract (`hotexec::__private`) expects it.
    #[test]
    fn expands_to_the_private_contract() {
        let expanded = main(
            quote!(
                drain_timeout = "30s",
                ready = "manual",
                init = telemetry::install
            ),
            quote! {
                /// Docs stay on the generated function.
                #[listen("127.0.0.1:8080", name = "http")]
                #[hotexec::listen("[::1]:9090", name = "admin", backlog = 128)]
                async fn main(shutdown: Shutdown, listeners: hotexec::Listeners) -> std::io::Result<()> {
                    Ok(())
                }
            },
        );
        let expected = quote! {
            #[doc = r" Docs stay on the generated function."]
            fn main() -> std::io::Result<()> {
                #[allow(clippy::unused_async, clippy::needless_pass_by_value)]
                async fn __hotexec_main(shutdown: Shutdown, listeners: hotexec::Listeners) -> std::io::Result<()> {
                    Ok(())
                }
                #[cfg(target_os = "linux")]
                #[used]
                #[unsafe(link_section = ".note.hotexec")]
                static __HOTEXEC_NOTE: ::hotexec::__private::ElfNote =
                    ::hotexec::__private::ElfNote::new(
                        match ::core::option_env!("CARGO_PKG_NAME") {
                            ::core::option::Option::Some(v) => v,
                            ::core::option::Option::None => "",
                        },
                        match ::core::option_env!("CARGO_PKG_VERSION") {
                            ::core::option::Option::Some(v) => v,
                            ::core::option::Option::None => "",
                        },
                        match ::core::option_env!("HOTEXEC_BUILD_ID") {
                            ::core::option::Option::Some(v) => v,
                            ::core::option::Option::None => "",
                        }
                    );
                let __hotexec_init: fn() = telemetry::install;
                __hotexec_init();
                ::hotexec::__private::Builder::new()
                    .drain_timeout_ms(30000u64)
                    .manual_ready()
                    .listen(::hotexec::__private::ListenSpec::new("http", "127.0.0.1:8080"))
                    .listen(::hotexec::__private::ListenSpec::new("admin", "[::1]:9090").backlog(128u32))
                    .run(|__hotexec_listeners, __hotexec_shutdown| {
                        ::hotexec::__private::tokio::runtime::Builder::new_multi_thread()
                            .enable_all()
                            .build()
                            .expect("hotexec: failed to build the tokio runtime")
                            .block_on(::hotexec::__private::Started::new(
                                __hotexec_main(__hotexec_shutdown, __hotexec_listeners)
                            ))
                    })
            }
        };
        assert_eq!(expanded.to_string(), expected.to_string());
    }

    #[test]
    fn health_options_become_one_spec_and_absent_ones_nothing() {
        let expanded = main(
            quote!(
                health = false,
                probation = "3s",
                max_error_rate = "0.5%",
                max_error_ratio = 1.5,
                min_sample = 500
            ),
            quote!(
                fn main() {}
            ),
        )
        .to_string();
        let expected = quote! {
            .health(::hotexec::__private::HealthSpec::new()
                .enabled(false)
                .probation_ms(3000u64)
                .max_error_rate(0.005f64)
                .max_error_ratio(1.5f64)
                .min_sample(500u64))
        };
        assert!(expanded.contains(&expected.to_string()), "{expanded}");
        let plain = main(
            quote!(),
            quote!(
                fn main() {}
            ),
        )
        .to_string();
        assert!(!plain.contains("HealthSpec"), "{plain}");
    }

    #[test]
    fn sync_main_reports_started_then_calls_the_body() {
        let expanded = main(
            quote!(),
            quote!(
                fn main() {}
            ),
        )
        .to_string();
        let expected = quote! {
            ::hotexec::__private::Builder::new()
                .run(|__hotexec_listeners, __hotexec_shutdown| {
                    ::hotexec::__private::main_started();
                    __hotexec_main()
                })
        };
        assert!(expanded.contains(&expected.to_string()), "{expanded}");
    }

    #[test]
    fn errors_still_emit_the_function() {
        let expanded = main(
            quote!(drain_timeout = "soon"),
            quote!(
                fn main(port: u16) {
                    let _ = port;
                }
            ),
        )
        .to_string();
        // The body is still there for rust-analyzer, uncalled, beside both errors.
        assert!(expanded.contains("fn __hotexec_main (port : u16) { let _ = port ; }"));
        assert!(!expanded.contains("Builder"));
        assert_eq!(expanded.matches("compile_error").count(), 2, "{expanded}");
    }
}
