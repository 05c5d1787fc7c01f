//! Parsing and validation of everything `#[hotexec::main]` reads: its own options, the
//! `#[listen]` attributes below it, and the signature of the function it is put on.
//!
//! Syntax errors (a missing `=`, a stray token) stop parsing at once, as `syn` does. Everything
//! else — an unknown option, a bad literal, an option given twice, a listener name used twice, an
//! unsupported parameter — is collected, so that the user sees every mistake in one build.

use std::collections::HashMap;

use hotexec_runtime::syntax;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprLit, FnArg, Ident, Lit, LitInt, LitStr, Path, Signature, Token, Type,
    Visibility, braced,
};

/// The keywords of `#[hotexec::main(…)]` and `#[listen(…)]`.
mod kw {
    syn::custom_keyword!(drain_timeout);
    syn::custom_keyword!(ready_timeout);
    syn::custom_keyword!(upgrade_signal);
    syn::custom_keyword!(pid_file);
    syn::custom_keyword!(ready);
    syn::custom_keyword!(init);
    syn::custom_keyword!(flavor);
    syn::custom_keyword!(worker_threads);
    syn::custom_keyword!(keeper);
    syn::custom_keyword!(health);
    syn::custom_keyword!(probation);
    syn::custom_keyword!(max_probation);
    syn::custom_keyword!(max_error_rate);
    syn::custom_keyword!(max_error_ratio);
    syn::custom_keyword!(min_sample);

    syn::custom_keyword!(name);
    syn::custom_keyword!(backlog);
    syn::custom_keyword!(v6only);
    syn::custom_keyword!(reuseport);
    syn::custom_keyword!(mode);
}

/// Collects errors so that all of them are reported at once (serde's `Ctxt`, in small).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Keeps the value of `Ok`, records the error of `Err`.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    pub(crate) fn extend(&mut self, other: Errors) {
        if let Some(e) = other.0 {
            self.push(e);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

// ---------------------------------------------------------------------------------------------
// `#[hotexec::main(…)]`
// ---------------------------------------------------------------------------------------------

/// One option key of `#[hotexec::main(…)]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum MainKey {
    DrainTimeout,
    ReadyTimeout,
    UpgradeSignal,
    PidFile,
    Ready,
    Init,
    Flavor,
    WorkerThreads,
    Keeper,
    Health,
    Probation,
    MaxProbation,
    MaxErrorRate,
    MaxErrorRatio,
    MinSample,
}

/// The name of an option key, as the user writes it.
trait KeyName: Copy + 'static {
    /// Every key, in the order they are listed in messages.
    const ALL: &'static [Self];

    fn as_str(self) -> &'static str;

    /// "`a`, `b`, `c`", for "expected one of …".
    fn list() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|k| format!("`{}`", k.as_str()))
            .collect();
        names.join(", ")
    }
}

impl KeyName for MainKey {
    const ALL: &'static [Self] = &[
        MainKey::DrainTimeout,
        MainKey::ReadyTimeout,
        MainKey::UpgradeSignal,
        MainKey::PidFile,
        MainKey::Ready,
        MainKey::Init,
        MainKey::Flavor,
        MainKey::WorkerThreads,
        MainKey::Keeper,
        MainKey::Health,
        MainKey::Probation,
        MainKey::MaxProbation,
        MainKey::MaxErrorRate,
        MainKey::MaxErrorRatio,
        MainKey::MinSample,
    ];

    fn as_str(self) -> &'static str {
        match self {
            MainKey::DrainTimeout => "drain_timeout",
            MainKey::ReadyTimeout => "ready_timeout",
            MainKey::UpgradeSignal => "upgrade_signal",
            MainKey::PidFile => "pid_file",
            MainKey::Ready => "ready",
            MainKey::Init => "init",
            MainKey::Flavor => "flavor",
            MainKey::WorkerThreads => "worker_threads",
            MainKey::Keeper => "keeper",
            MainKey::Health => "health",
            MainKey::Probation => "probation",
            MainKey::MaxProbation => "max_probation",
            MainKey::MaxErrorRate => "max_error_rate",
            MainKey::MaxErrorRatio => "max_error_ratio",
            MainKey::MinSample => "min_sample",
        }
    }
}

/// An option key: a known one, or an identifier that is none of them (reported, then skipped).
enum Key<K> {
    Known(K, Span),
    Unknown(Ident),
}

impl Parse for Key<MainKey> {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        macro_rules! keys {
            ($($kw:ident => $key:ident),* $(,)?) => {$(
                if lookahead.peek(kw::$kw) {
                    let kw: kw::$kw = input.parse()?;
                    return Ok(Key::Known(MainKey::$key, kw.span));
                }
            )*};
        }
        keys! {
            drain_timeout => DrainTimeout,
            ready_timeout => ReadyTimeout,
            upgrade_signal => UpgradeSignal,
            pid_file => PidFile,
            ready => Ready,
            init => Init,
            flavor => Flavor,
            worker_threads => WorkerThreads,
            keeper => Keeper,
            health => Health,
            max_probation => MaxProbation,
            probation => Probation,
            max_error_rate => MaxErrorRate,
            max_error_ratio => MaxErrorRatio,
            min_sample => MinSample,
        }
        if input.peek(Ident::peek_any) {
            return Ok(Key::Unknown(input.call(Ident::parse_any)?));
        }
        Err(lookahead.error())
    }
}

/// `ready = "auto" | "manual"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Ready {
    #[default]
    Auto,
    Manual,
}

/// `flavor = "multi_thread" | "current_thread"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Flavor {
    #[default]
    MultiThread,
    CurrentThread,
}

/// The options of `#[hotexec::main(…)]`. Parsing fails only on a syntax error; what is wrong in
/// an option that parsed is in `errors`, and that option is left out, as if not given. `None`
/// means "not given": the runtime's default applies and the generated code does not mention it.
#[derive(Default)]
pub(crate) struct MainArgs {
    pub(crate) errors: Errors,
    pub(crate) drain_timeout_ms: Option<u64>,
    pub(crate) ready_timeout_ms: Option<u64>,
    /// Canonical name, e.g. `SIGUSR2`.
    pub(crate) upgrade_signal: Option<&'static str>,
    pub(crate) pid_file: Option<LitStr>,
    pub(crate) ready: Ready,
    pub(crate) init: Option<Path>,
    /// With the span of the `flavor` key, to point at it if the function is not async.
    pub(crate) flavor: Option<(Flavor, Span)>,
    /// With the span of the `worker_threads` key.
    pub(crate) worker_threads: Option<(usize, Span)>,
    /// `keeper = true`: the started process stays as a keeper of the serving generation.
    pub(crate) keeper: bool,
    /// The health gate's options (`health`, `probation`, `max_probation`, `max_error_rate`,
    /// `max_error_ratio`, `min_sample`).
    pub(crate) health: HealthArgs,
}

/// The health gate's options; `None`: not given.
#[derive(Default)]
pub(crate) struct HealthArgs {
    pub(crate) enabled: Option<bool>,
    /// With the span of the key, to point at it if `max_probation` is shorter.
    pub(crate) probation_ms: Option<(u64, Span)>,
    pub(crate) max_probation_ms: Option<(u64, Span)>,
    pub(crate) max_error_rate: Option<f64>,
    pub(crate) max_error_ratio: Option<f64>,
    pub(crate) min_sample: Option<u64>,
}

impl HealthArgs {
    pub(crate) fn is_empty(&self) -> bool {
        self.enabled.is_none()
            && self.probation_ms.is_none()
            && self.max_probation_ms.is_none()
            && self.max_error_rate.is_none()
            && self.max_error_ratio.is_none()
            && self.min_sample.is_none()
    }
}

impl Parse for MainArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = MainArgs::default();
        let mut errors = Errors::default();
        let mut seen = HashMap::new();
        while !input.is_empty() {
            let key: Key<MainKey> = input.parse()?;
            let value = parse_value(input, &key)?;
            match key {
                Key::Unknown(ident) => errors.push(syn::Error::new_spanned(
                    &ident,
                    format!(
                        "unknown option `{ident}`: expected one of {}",
                        MainKey::list()
                    ),
                )),
                Key::Known(key, span) => {
                    if seen.insert(key, span).is_some() {
                        errors.push(given_twice(key.as_str(), span));
                    } else {
                        errors.ok(args.set(key, span, &value));
                    }
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        if let (Some((p, _)), Some((m, span))) =
            (args.health.probation_ms, args.health.max_probation_ms)
        {
            if m < p {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "`max_probation` ({m} ms) is shorter than `probation` ({p} ms): it is how \
                         long the probation may be extended while too few requests came, so it \
                         must be at least as long"
                    ),
                ));
            }
        }
        args.errors = errors;
        Ok(args)
    }
}

impl MainArgs {
    fn set(&mut self, key: MainKey, span: Span, value: &Expr) -> syn::Result<()> {
        let name = key.as_str();
        match key {
            MainKey::DrainTimeout => self.drain_timeout_ms = Some(duration_ms(name, value)?),
            MainKey::ReadyTimeout => {
                let ms = duration_ms(name, value)?;
                if ms == 0 {
                    return Err(syn::Error::new_spanned(
                        value,
                        "`ready_timeout` must be longer than zero: no new binary is ready in no time",
                    ));
                }
                self.ready_timeout_ms = Some(ms);
            }
            MainKey::UpgradeSignal => {
                let lit = lit_str(name, value, "\"SIGUSR2\"")?;
                let canonical = syntax::parse_upgrade_signal(&lit.value())
                    .map_err(|e| syn::Error::new_spanned(&lit, e))?;
                self.upgrade_signal = Some(canonical);
            }
            MainKey::PidFile => {
                let lit = lit_str(name, value, "\"/run/app.pid\"")?;
                let path = lit.value();
                if path.is_empty() {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`pid_file` must not be empty: give a path, e.g. `pid_file = \"/run/app.pid\"`",
                    ));
                }
                if path.contains('\0') {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`pid_file` cannot contain a NUL byte",
                    ));
                }
                self.pid_file = Some(lit);
            }
            MainKey::Ready => {
                let lit = lit_str(name, value, "\"manual\"")?;
                self.ready = match lit.value().as_str() {
                    "auto" => Ready::Auto,
                    "manual" => Ready::Manual,
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!(
                                "unknown `ready` mode `{other}`: expected `\"auto\"` (ready once \
                                 `main` runs) or `\"manual\"` (the app calls `hotexec::ready()`)"
                            ),
                        ));
                    }
                };
            }
            MainKey::Init => match value {
                Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
                    self.init = Some(p.path.clone());
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        value,
                        "`init` expects the path of a `fn()`, without quotes or call parentheses, \
                         e.g. `init = telemetry::install`",
                    ));
                }
            },
            MainKey::Flavor => {
                let lit = lit_str(name, value, "\"current_thread\"")?;
                let flavor = match lit.value().as_str() {
                    "multi_thread" => Flavor::MultiThread,
                    "current_thread" => Flavor::CurrentThread,
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!(
                                "unknown flavor `{other}`: expected `\"multi_thread\"` or \
                                 `\"current_thread\"`"
                            ),
                        ));
                    }
                };
                self.flavor = Some((flavor, span));
            }
            MainKey::WorkerThreads => {
                let lit = lit_int(name, value, "4")?;
                let n: usize = lit.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`worker_threads` must be at least 1",
                    ));
                }
                self.worker_threads = Some((n, span));
            }
            MainKey::Health => {
                self.health.enabled = Some(lit_bool(
                    name,
                    value,
                    ": with `health = false` a new generation is committed once it survived the \
                     probation, whatever it answered",
                )?);
            }
            MainKey::Probation => {
                self.health.probation_ms = Some((duration_ms(name, value)?, span));
            }
            MainKey::MaxProbation => {
                self.health.max_probation_ms = Some((duration_ms(name, value)?, span));
            }
            MainKey::MaxErrorRate => {
                let lit = lit_str(name, value, "\"2%\"")?;
                let rate = syntax::parse_rate(&lit.value())
                    .map_err(|e| syn::Error::new_spanned(&lit, format!("`{name}`: {e}")))?;
                self.health.max_error_rate = Some(rate);
            }
            MainKey::MaxErrorRatio => {
                let digits = match value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(i), ..
                    }) if i.suffix().is_empty() => i.base10_digits().to_owned(),
                    Expr::Lit(ExprLit {
                        lit: Lit::Float(f), ..
                    }) if f.suffix().is_empty() => f.base10_digits().to_owned(),
                    _ => {
                        return Err(syn::Error::new_spanned(
                            value,
                            "`max_error_ratio` expects a number, e.g. `max_error_ratio = 2` or \
                             `max_error_ratio = 1.5` (times the old generation's error rate)",
                        ));
                    }
                };
                let ratio = syntax::parse_ratio(&digits)
                    .map_err(|e| syn::Error::new_spanned(value, format!("`{name}`: {e}")))?;
                self.health.max_error_ratio = Some(ratio);
            }
            MainKey::MinSample => {
                let lit = lit_int(name, value, "200")?;
                let n = syntax::parse_sample(lit.base10_digits())
                    .map_err(|e| syn::Error::new_spanned(&lit, format!("`{name}`: {e}")))?;
                self.health.min_sample = Some(n);
            }
            MainKey::Keeper => {
                self.keeper = lit_bool(
                    name,
                    value,
                    ": with `keeper = true` the started process stays as a keeper of the serving \
                     generation, so its pid never changes",
                )?;
            }
        }
        Ok(())
    }

    /// The options that only make sense for an `async fn` (they configure its tokio runtime).
    pub(crate) fn check_flavor(&self, asyncness: Option<Token![async]>) -> syn::Result<()> {
        let mut errors = Errors::default();
        if asyncness.is_none() {
            for (key, span) in [
                ("flavor", self.flavor.map(|f| f.1)),
                ("worker_threads", self.worker_threads.map(|w| w.1)),
            ] {
                if let Some(span) = span {
                    errors.push(syn::Error::new(
                        span,
                        format!(
                            "`{key}` configures the tokio runtime of an `async fn main`; this \
                             `main` is not async, so remove `{key}` or make `main` async"
                        ),
                    ));
                }
            }
        } else if let (Some((Flavor::CurrentThread, _)), Some((_, span))) =
            (self.flavor, self.worker_threads)
        {
            errors.push(syn::Error::new(
                span,
                "`worker_threads` needs `flavor = \"multi_thread\"`: a `current_thread` runtime \
                 runs everything on the main thread",
            ));
        }
        errors.finish()
    }
}

/// Parses `= VALUE` after a key. Any expression is accepted here so that a value of the wrong
/// kind is reported by the key's own check, with a message about that key.
fn parse_value<K: KeyName>(input: ParseStream, key: &Key<K>) -> syn::Result<Expr> {
    if !input.peek(Token![=]) {
        let (name, span) = match key {
            Key::Known(key, span) => (key.as_str().to_owned(), *span),
            Key::Unknown(ident) => (ident.to_string(), ident.span()),
        };
        return Err(syn::Error::new(span, format!("expected `{name} = …`")));
    }
    input.parse::<Token![=]>()?;
    input.parse()
}

fn given_twice(key: &str, span: Span) -> syn::Error {
    syn::Error::new(
        span,
        format!("option `{key}` is given twice: keep only one `{key} = …`"),
    )
}

/// The value as a string literal, or an error saying that `key` takes one (`example` is what a
/// right value looks like, quotes included).
fn lit_str(key: &str, value: &Expr, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` expects a string literal, e.g. `{key} = {example}`"),
        )),
    }
}

fn lit_int(key: &str, value: &Expr, example: &str) -> syn::Result<LitInt> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Ok(i.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` expects an integer literal, e.g. `{key} = {example}`"),
        )),
    }
}

/// `why` follows the message (empty, or `": …"` saying what the option does).
fn lit_bool(key: &str, value: &Expr, why: &str) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` expects `true` or `false`{why}"),
        )),
    }
}

/// A duration option, checked with the runtime's own parser.
fn duration_ms(key: &str, value: &Expr) -> syn::Result<u64> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Int(n), ..
    }) = value
    {
        return Err(syn::Error::new_spanned(
            value,
            format!(
                "`{key}` expects a duration string with a unit, e.g. `{key} = \"{}s\"`",
                n.base10_digits()
            ),
        ));
    }
    let lit = lit_str(key, value, "\"30s\"")?;
    let duration =
        syntax::parse_duration(&lit.value()).map_err(|e| syn::Error::new_spanned(&lit, e))?;
    // `parse_duration` computes in u64 milliseconds, so this cannot overflow.
    u64::try_from(duration.as_millis())
        .map_err(|_| syn::Error::new_spanned(&lit, "duration too long"))
}

// ---------------------------------------------------------------------------------------------
// `#[listen(…)]`
// ---------------------------------------------------------------------------------------------

/// The name of a listener declared without `name = "…"`.
pub(crate) const DEFAULT_LISTENER_NAME: &str = "default";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum ListenKey {
    Name,
    Backlog,
    V6Only,
    ReusePort,
    Mode,
}

impl KeyName for ListenKey {
    const ALL: &'static [Self] = &[
        ListenKey::Name,
        ListenKey::Backlog,
        ListenKey::V6Only,
        ListenKey::ReusePort,
        ListenKey::Mode,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ListenKey::Name => "name",
            ListenKey::Backlog => "backlog",
            ListenKey::V6Only => "v6only",
            ListenKey::ReusePort => "reuseport",
            ListenKey::Mode => "mode",
        }
    }
}

impl Parse for Key<ListenKey> {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        macro_rules! keys {
            ($($kw:ident => $key:ident),* $(,)?) => {$(
                if lookahead.peek(kw::$kw) {
                    let kw: kw::$kw = input.parse()?;
                    return Ok(Key::Known(ListenKey::$key, kw.span));
                }
            )*};
        }
        keys! {
            name => Name,
            backlog => Backlog,
            v6only => V6Only,
            reuseport => ReusePort,
            mode => Mode,
        }
        if input.peek(Ident::peek_any) {
            return Ok(Key::Unknown(input.call(Ident::parse_any)?));
        }
        Err(lookahead.error())
    }
}

/// The arguments of one `#[listen("ADDR", name = "…", backlog = N, …)]`. As for [`MainArgs`],
/// parsing fails only on a syntax error and the rest is in `errors`; the listener is usable only
/// if `errors` is empty, but its name is still checked against the others.
pub(crate) struct ListenArgs {
    pub(crate) errors: Errors,
    pub(crate) addr: LitStr,
    pub(crate) name: ListenerName,
    pub(crate) backlog: Option<u32>,
    pub(crate) v6only: Option<bool>,
    pub(crate) reuseport: Option<bool>,
    pub(crate) mode: Option<u32>,
}

/// The `name` of a `#[listen]`.
pub(crate) enum ListenerName {
    /// No `name = …`: the listener is called [`DEFAULT_LISTENER_NAME`].
    Default,
    /// A valid name.
    Given(LitStr),
    /// A name that was refused (the error is in `errors`).
    Invalid,
}

impl Parse for ListenArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let mut parsed_addr = None;
        let addr = if input.peek(LitStr) {
            let addr: LitStr = input.parse()?;
            match syntax::ListenAddr::parse(&addr.value()) {
                Ok(a) => parsed_addr = Some(a),
                Err(e) => errors.push(syn::Error::new_spanned(&addr, e)),
            }
            addr
        } else {
            return Err(input.error(
                "expected the address as a string literal first, e.g. \
                 `#[listen(\"127.0.0.1:8080\", name = \"http\")]`",
            ));
        };
        let mut name = ListenerName::Default;
        let mut backlog = None;
        let (mut v6only, mut reuseport, mut mode) = (None, None, None);
        let mut seen = HashMap::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: Key<ListenKey> = input.parse()?;
            let value = parse_value(input, &key)?;
            let (key, span) = match key {
                Key::Unknown(ident) => {
                    errors.push(syn::Error::new_spanned(
                        &ident,
                        format!(
                            "unknown `#[listen]` option `{ident}`: expected one of {}",
                            ListenKey::list()
                        ),
                    ));
                    continue;
                }
                Key::Known(key, span) => (key, span),
            };
            if seen.insert(key, span).is_some() {
                errors.push(given_twice(key.as_str(), span));
                continue;
            }
            match key {
                ListenKey::Name => {
                    let lit = lit_str("name", &value, "\"http\"").and_then(|lit| {
                        syntax::check_listener_name(&lit.value())
                            .map_err(|e| syn::Error::new_spanned(&lit, e))?;
                        Ok(lit)
                    });
                    name = errors
                        .ok(lit)
                        .map_or(ListenerName::Invalid, ListenerName::Given);
                }
                ListenKey::Backlog => {
                    backlog =
                        errors.ok(lit_int("backlog", &value, "128").and_then(|lit| {
                            match lit.base10_parse::<u32>() {
                                Ok(n @ 1..=65535) => Ok(n),
                                _ => Err(syn::Error::new_spanned(
                                    &lit,
                                    "`backlog` must be an integer from 1 to 65535",
                                )),
                            }
                        }));
                }
                ListenKey::V6Only => {
                    let checked = lit_bool("v6only", &value, "").and_then(|b| match &parsed_addr {
                        Some(syntax::ListenAddr::Tcp(sa) | syntax::ListenAddr::Udp(sa))
                            if sa.is_ipv4() =>
                        {
                            Err(syn::Error::new_spanned(
                                &value,
                                format!(
                                    "`v6only` applies to IPv6 addresses only, and `{}` is IPv4",
                                    addr.value()
                                ),
                            ))
                        }
                        Some(syntax::ListenAddr::Unix(_)) => Err(syn::Error::new_spanned(
                            &value,
                            "`v6only` applies to IPv6 addresses only, not to a Unix socket",
                        )),
                        _ => Ok(b),
                    });
                    v6only = errors.ok(checked);
                }
                ListenKey::ReusePort => {
                    let checked = lit_bool("reuseport", &value, "").and_then(|b| match &parsed_addr {
                        Some(syntax::ListenAddr::Unix(_)) => Err(syn::Error::new_spanned(
                            &value,
                            "`reuseport` (SO_REUSEPORT) applies to TCP and UDP sockets, not to a Unix socket",
                        )),
                        _ => Ok(b),
                    });
                    reuseport = errors.ok(checked);
                }
                ListenKey::Mode => {
                    let checked = lit_int("mode", &value, "0o660").and_then(|lit| {
                        let bits = match lit.base10_parse::<u32>() {
                            Ok(n @ 0..=0o777) => n,
                            _ => {
                                return Err(syn::Error::new_spanned(
                                    &lit,
                                    "`mode` takes permission bits from 0o000 to 0o777, e.g. `mode = 0o660`",
                                ));
                            }
                        };
                        match &parsed_addr {
                            Some(syntax::ListenAddr::Unix(_)) | None => Ok(bits),
                            Some(_) => Err(syn::Error::new_spanned(
                                &value,
                                format!(
                                    "`mode` sets the permissions of a Unix socket's file; `{}` is not a `unix:` address",
                                    addr.value()
                                ),
                            )),
                        }
                    });
                    mode = errors.ok(checked);
                }
            }
        }
        Ok(ListenArgs {
            errors,
            addr,
            name,
            backlog,
            v6only,
            reuseport,
            mode,
        })
    }
}

/// A listener ready to be expanded.
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) backlog: Option<u32>,
    pub(crate) v6only: Option<bool>,
    pub(crate) reuseport: Option<bool>,
    pub(crate) mode: Option<u32>,
}

/// Whether `attr` is one of ours: `#[listen(…)]` or `#[hotexec::listen(…)]`.
fn is_listen(attr: &Attribute) -> bool {
    let path = attr.path();
    let segments: Vec<_> = path.segments.iter().map(|s| &s.ident).collect();
    match segments.as_slice() {
        [listen] => path.leading_colon.is_none() && *listen == "listen",
        [hotexec, listen] => *hotexec == "hotexec" && *listen == "listen",
        _ => false,
    }
}

/// Removes the `#[listen]` attributes from `attrs` and returns the valid listeners in order,
/// recording every error (bad arguments, a name used twice) in `errors`.
pub(crate) fn take_listeners(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> Vec<Listener> {
    let mut listeners = Vec::new();
    // By normalised name (`env_suffix`), so that `http-alt` and `HTTP_ALT`, whose environment
    // overrides would be the same variable, are caught too.
    let mut names: HashMap<String, String> = HashMap::new();
    let (ours, others): (Vec<_>, Vec<_>) = attrs.drain(..).partition(is_listen);
    *attrs = others;
    for attr in ours {
        let Some(mut args) = errors.ok(attr.parse_args::<ListenArgs>()) else {
            continue;
        };
        let usable = args.errors.is_empty();
        errors.extend(std::mem::take(&mut args.errors));
        // A clash is reported on the name, or on the whole attribute when it has none.
        let (name, at_fault) = match &args.name {
            ListenerName::Invalid => continue,
            ListenerName::Given(lit) => (lit.value(), lit.to_token_stream()),
            ListenerName::Default => (DEFAULT_LISTENER_NAME.to_owned(), attr.to_token_stream()),
        };
        let error_at_fault = |message: String| syn::Error::new_spanned(&at_fault, message);
        let unnamed_note = if matches!(args.name, ListenerName::Default) {
            " (a `#[listen]` without `name` is named `default`)"
        } else {
            ""
        };
        match names.get(&syntax::env_suffix(&name)) {
            Some(first) if *first == name => {
                errors.push(error_at_fault(format!(
                    "duplicate listener name `{name}`: give each `#[listen]` its own \
                     `name = \"…\"`{unnamed_note}"
                )));
                continue;
            }
            Some(first) => {
                errors.push(error_at_fault(format!(
                    "listener name `{name}` clashes with `{first}`: both normalise to `{}`, so \
                     their environment overrides would be the same variable; give each \
                     `#[listen]` a distinct `name = \"…\"`",
                    syntax::env_suffix(&name)
                )));
                continue;
            }
            None => {}
        }
        names.insert(syntax::env_suffix(&name), name.clone());
        if usable {
            listeners.push(Listener {
                name,
                addr: args.addr.value(),
                backlog: args.backlog,
                v6only: args.v6only,
                reuseport: args.reuseport,
                mode: args.mode,
            });
        }
    }
    listeners
}

// ---------------------------------------------------------------------------------------------
// The function
// ---------------------------------------------------------------------------------------------

/// The function under `#[hotexec::main]`. Like tokio's, the body is kept as raw tokens and not
/// parsed: a body that does not parse yet (the user is typing) is still expanded, so that
/// rust-analyzer keeps working inside it, and rustc reports its errors where they are.
pub(crate) struct MainFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) brace_token: syn::token::Brace,
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) body: TokenStream,
}

impl Parse for MainFn {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let content;
        let brace_token = braced!(content in input);
        let inner_attrs = content.call(Attribute::parse_inner)?;
        let body = content.parse()?;
        Ok(MainFn {
            attrs,
            vis,
            sig,
            brace_token,
            inner_attrs,
            body,
        })
    }
}

/// What a parameter of the user's function receives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Param {
    Listeners,
    Shutdown,
}

impl Param {
    fn as_str(self) -> &'static str {
        match self {
            Param::Listeners => "Listeners",
            Param::Shutdown => "Shutdown",
        }
    }
}

const ALLOWED_PARAMS: &str = "expected `hotexec::Listeners` and/or `hotexec::Shutdown`";

/// The parameters of the user's function, in the user's order, each with the span of its type
/// (where a type mismatch is reported if the name matched but the type is another one).
pub(crate) fn check_signature(sig: &Signature) -> syn::Result<Vec<(Param, Span)>> {
    let mut errors = Errors::default();
    let what = "`#[hotexec::main]` function";
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            c,
            format!("a {what} cannot be `const`"),
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            format!("a {what} cannot be `unsafe`"),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("a {what} cannot be `extern`"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "a {what} cannot be generic: it takes no type or lifetime parameters; \
                 {ALLOWED_PARAMS} as arguments"
            ),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            format!("a {what} cannot be variadic: {ALLOWED_PARAMS}"),
        ));
    }
    let mut params: Vec<(Param, Span)> = Vec::new();
    for arg in &sig.inputs {
        let ty = match arg {
            FnArg::Receiver(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    format!("a {what} cannot take `self`: {ALLOWED_PARAMS}"),
                ));
                continue;
            }
            FnArg::Typed(pat) => &*pat.ty,
        };
        let Some(param) = param_of(ty) else {
            errors.push(syn::Error::new_spanned(
                ty,
                format!("unsupported parameter type: {ALLOWED_PARAMS}, each at most once"),
            ));
            continue;
        };
        if params.iter().any(|(p, _)| *p == param) {
            errors.push(syn::Error::new_spanned(
                ty,
                format!(
                    "`{}` is already taken by another parameter: {ALLOWED_PARAMS}, each at most once",
                    param.as_str()
                ),
            ));
            continue;
        }
        params.push((param, ty.span()));
    }
    errors.finish()?;
    Ok(params)
}

/// `Listeners`, `hotexec::Listeners`, `::hotexec::Listeners`, … by the last path segment.
fn param_of(ty: &Type) -> Option<Param> {
    let Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if !last.arguments.is_none() {
        return None;
    }
    if last.ident == "Listeners" {
        Some(Param::Listeners)
    } else if last.ident == "Shutdown" {
        Some(Param::Shutdown)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    /// Parses, then fails if any option was wrong.
    fn main_args(tokens: TokenStream) -> syn::Result<MainArgs> {
        let mut args: MainArgs = syn::parse2(tokens)?;
        std::mem::take(&mut args.errors).finish()?;
        Ok(args)
    }

    fn messages(e: syn::Error) -> Vec<String> {
        e.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn main_options_are_validated_and_converted() {
        let args = main_args(quote! {
            drain_timeout = "30s", ready_timeout = "500ms", upgrade_signal = "usr1",
            pid_file = "/run/app.pid", ready = "manual", init = telemetry::install,
            flavor = "multi_thread", worker_threads = 4, keeper = true,
        })
        .unwrap();
        assert!(args.keeper);
        assert_eq!(args.drain_timeout_ms, Some(30_000));
        assert_eq!(args.ready_timeout_ms, Some(500));
        assert_eq!(args.upgrade_signal, Some("SIGUSR1"));
        assert_eq!(args.pid_file.unwrap().value(), "/run/app.pid");
        assert_eq!(args.ready, Ready::Manual);
        let init = args.init.unwrap();
        assert_eq!(quote!(#init).to_string(), "telemetry :: install");
        assert_eq!(args.flavor.unwrap().0, Flavor::MultiThread);
        assert_eq!(args.worker_threads.unwrap().0, 4);
    }

    #[test]
    fn no_options_means_runtime_defaults() {
        let args = main_args(quote!()).unwrap();
        assert_eq!(args.drain_timeout_ms, None);
        assert_eq!(args.ready, Ready::Auto);
        assert!(args.flavor.is_none() && args.worker_threads.is_none() && args.init.is_none());
        assert!(!args.keeper);
    }

    #[test]
    fn all_option_errors_are_reported_together() {
        let e = main_args(quote! {
            foo = 1, drain_timeout = "soon", drain_timeout = "1s", ready = "later",
            worker_threads = 0, init = "setup", pid_file = "", ready_timeout = 10,
        })
        .err()
        .unwrap();
        let m = messages(e);
        assert_eq!(m.len(), 8, "{m:#?}");
        assert!(m[0].starts_with("unknown option `foo`: expected one of `drain_timeout`"));
        assert!(m[1].contains("invalid duration `soon`"), "{}", m[1]);
        assert!(m[2].contains("option `drain_timeout` is given twice"));
        assert!(m[3].contains("unknown `ready` mode `later`"));
        assert!(m[4].contains("at least 1"));
        assert!(m[5].contains("path of a `fn()`"));
        assert!(m[6].contains("`pid_file` must not be empty"));
        assert!(m[7].contains("ready_timeout = \"10s\""), "{}", m[7]);
    }

    #[test]
    fn flavor_options_need_an_async_fn() {
        let args = main_args(quote!(flavor = "current_thread", worker_threads = 2)).unwrap();
        let m = messages(args.check_flavor(None).unwrap_err());
        assert_eq!(m.len(), 2);
        let m = messages(
            args.check_flavor(Some(<Token![async]>::default()))
                .unwrap_err(),
        );
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("needs `flavor = \"multi_thread\"`"));
    }

    fn listeners(attrs: Vec<Attribute>) -> (Vec<Listener>, Vec<Attribute>, Vec<String>) {
        let mut attrs = attrs;
        let mut errors = Errors::default();
        let listeners = take_listeners(&mut attrs, &mut errors);
        let errors = errors.finish().err().map(messages).unwrap_or_default();
        (listeners, attrs, errors)
    }

    #[test]
    fn listen_attributes_are_taken_in_order() {
        let (ls, rest, errors) = listeners(vec![
            syn::parse_quote!(#[doc = "kept"]),
            syn::parse_quote!(#[listen("127.0.0.1:8080")]),
            syn::parse_quote!(#[hotexec::listen("unix:/run/a.sock", name = "admin", backlog = 16,)]),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rest.len(), 1);
        assert_eq!(ls.len(), 2);
        assert_eq!(
            (ls[0].name.as_str(), ls[0].addr.as_str()),
            ("default", "127.0.0.1:8080")
        );
        assert_eq!(ls[0].backlog, None);
        assert_eq!((ls[1].name.as_str(), ls[1].backlog), ("admin", Some(16)));
    }

    #[test]
    fn listener_names_must_differ_even_once_normalised() {
        let (ls, _, errors) = listeners(vec![
            syn::parse_quote!(#[listen("127.0.0.1:1", name = "http-alt")]),
            syn::parse_quote!(#[listen("127.0.0.1:2", name = "HTTP_ALT")]),
            syn::parse_quote!(#[listen("127.0.0.1:3")]),
            syn::parse_quote!(#[listen("127.0.0.1:4")]),
        ]);
        assert_eq!(ls.len(), 2);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("clashes with `http-alt`"));
        assert!(errors[1].starts_with("duplicate listener name `default`"));
    }

    #[test]
    fn listen_errors_are_reported_together() {
        let (ls, _, errors) = listeners(vec![syn::parse_quote!(
            #[listen("::1:80", name = "9", backlog = 0, reuse = true, name = "x")]
        )]);
        assert!(ls.is_empty());
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("brackets"));
        assert!(errors[1].contains("invalid listener name `9`"));
        assert!(errors[2].contains("from 1 to 65535"));
        assert!(
            errors[3].contains("expected one of `name`, `backlog`, `v6only`, `reuseport`, `mode`")
        );
        assert!(errors[4].contains("`name` is given twice"));
    }

    #[test]
    fn a_wrong_option_is_left_out_and_the_others_kept() {
        let args: MainArgs =
            syn::parse2(quote!(drain_timeout = "soon", ready_timeout = "5s")).unwrap();
        assert_eq!(args.drain_timeout_ms, None);
        assert_eq!(args.ready_timeout_ms, Some(5_000));
        assert!(!args.errors.is_empty());
    }

    #[test]
    fn a_broken_listener_still_has_its_name_checked() {
        let (ls, _, errors) = listeners(vec![
            syn::parse_quote!(#[listen("127.0.0.1:1", name = "web")]),
            syn::parse_quote!(#[listen("127.0.0.1:2", name = "web", backlog = 0)]),
        ]);
        assert_eq!(ls.len(), 1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("from 1 to 65535"));
        assert!(errors[1].starts_with("duplicate listener name `web`"));
    }

    #[test]
    fn parameters_are_recognised_by_their_last_segment() {
        let sig: Signature = syn::parse_quote!(
            async fn main(s: ::hotexec::Shutdown, l: Listeners) -> std::io::Result<()>
        );
        let params: Vec<Param> = check_signature(&sig)
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(params, [Param::Shutdown, Param::Listeners]);

        let sig: Signature = syn::parse_quote!(
            unsafe fn main<T>(l: Listeners, l2: hotexec::Listeners, x: u32)
        );
        let m = messages(check_signature(&sig).unwrap_err());
        assert_eq!(m.len(), 4, "{m:#?}");
        assert!(m[0].contains("cannot be `unsafe`"));
        assert!(m[1].contains("cannot be generic"));
        assert!(m[2].contains("`Listeners` is already taken"));
        assert!(m[3].starts_with("unsupported parameter type"));
    }
}
