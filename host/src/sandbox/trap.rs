//! A trap in one line: what it was, the guest's panic message if it printed
//! one, and the innermost few frames of its backtrace.
//!
//! A Rust guest that panics writes `panicked at <file>:<line>:<col>:` and
//! the message to stderr, then executes `unreachable`. The host keeps the
//! last few KiB a guest writes to stderr ([`StderrTail`]) so that the trap
//! can say why, instead of only "unreachable".

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Frames shown in a trap's one-line report.
const FRAMES: usize = 4;

/// The longest panic message kept in a trap's report.
const MAX_PANIC: usize = 300;

/// Bytes of a guest's stderr kept (the last ones written).
pub(crate) const STDERR_TAIL: usize = 4096;

/// Describes a trap in one line, e.g. `unreachable executed (panicked at
/// src/lib.rs:9:5: boom) at trap::run <- plugin::export`.
pub(crate) fn describe(e: &wasmtime::Error, stderr: &[u8]) -> String {
    let what = match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => "stack overflow".to_owned(),
        Some(Trap::MemoryOutOfBounds) => "out-of-bounds memory access".to_owned(),
        Some(Trap::TableOutOfBounds) => "out-of-bounds table access".to_owned(),
        Some(Trap::IndirectCallToNull) => "call to an uninitialized table element".to_owned(),
        Some(Trap::BadSignature) => "indirect call signature mismatch".to_owned(),
        Some(Trap::IntegerOverflow) => "integer overflow".to_owned(),
        Some(Trap::IntegerDivisionByZero) => "integer divide by zero".to_owned(),
        Some(Trap::BadConversionToInteger) => "invalid conversion to integer".to_owned(),
        Some(Trap::UnreachableCodeReached) => "unreachable executed".to_owned(),
        Some(other) => other
            .to_string()
            .trim_start_matches("wasm trap: ")
            .to_owned(),
        // Not a wasm trap (a host error surfaced through the guest): its
        // first line.
        None => first_line(&e.to_string()),
    };
    let mut out = what;
    if let Some(panic) = panic_message(stderr) {
        out.push_str(&format!(" ({panic})"));
    }
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        let all: Vec<String> = bt
            .frames()
            .iter()
            .map(|f| match f.func_name() {
                Some(name) => short_name(name),
                None => format!("func[{}]", f.func_index()),
            })
            .collect();
        // The plugin's own frames: a panic's innermost frames are the
        // runtime's abort machinery, which says nothing.
        let mut ours: Vec<&String> = all.iter().filter(|n| !is_runtime(n)).collect();
        if ours.is_empty() {
            ours = all.iter().collect();
        }
        if !ours.is_empty() {
            out.push_str(" at ");
            let shown: Vec<&str> = ours.iter().take(FRAMES).map(|s| s.as_str()).collect();
            out.push_str(&shown.join(" <- "));
            if ours.len() > FRAMES {
                out.push_str(" <- ...");
            }
        }
    }
    out
}

/// Frames of the Rust runtime and the bindings, not of the plugin.
fn is_runtime(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "std::",
        "core::",
        "alloc::",
        "panic_abort::",
        "__rust",
        "__rustc::",
        "rust_panic",
        "wit_bindgen",
        "abort",
        "<std::",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The last Rust panic message in `stderr`, on one line.
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let start = text.rfind("panicked at ")?;
    let rest = &text[start..];
    // "panicked at src/lib.rs:9:5:\nboom\nnote: run with ..."
    let mut lines = rest.lines();
    let head = lines.next()?.trim_end_matches(':').to_owned();
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = if message.is_empty() {
        head
    } else {
        format!("{head}: {}", message.join(" "))
    };
    if out.len() > MAX_PANIC {
        let mut end = MAX_PANIC;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    Some(out)
}

/// A function name as a Rust path without its hash:
/// `_ZN13ledger_credit6credit17h0123456789abcdefE` → `ledger_credit::credit`.
/// Names that are not Rust symbols are kept as they are.
fn short_name(name: &str) -> String {
    let demangled = match rustc_demangle::try_demangle(name) {
        // `{:#}` leaves the hash out.
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_owned(),
    };
    first_line(&demangled)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

/// The tail of what a guest writes to stderr: every write succeeds, and the
/// last [`STDERR_TAIL`] bytes are kept.
#[derive(Clone, Debug, Default)]
pub(crate) struct StderrTail {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl StderrTail {
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > STDERR_TAIL {
            let cut = buf.len() - STDERR_TAIL;
            buf.drain(..cut);
        }
    }
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_message_is_one_line() {
        let stderr = b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom: the\nwhole story\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:9:5: boom: the whole story")
        );
        assert_eq!(panic_message(b"nothing to see"), None);
    }

    #[test]
    fn names_are_demangled_without_their_hash() {
        assert_eq!(
            short_name("_ZN4trap7recurse17h8e555f52ec62c67eE"),
            "trap::recurse"
        );
        assert_eq!(
            short_name("_RNvNtCshXfaRvt2tfW_3std7process5abort"),
            "std::process::abort"
        );
        assert_eq!(short_name("<wasm function 3>"), "<wasm function 3>");
        assert!(is_runtime("std::process::abort"));
        assert!(!is_runtime("trap::recurse"));
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let tail = StderrTail::default();
        tail.push(&vec![b'a'; STDERR_TAIL]);
        tail.push(b"end");
        let c = tail.contents();
        assert_eq!(c.len(), STDERR_TAIL);
        assert!(c.ends_with(b"aend"));
    }
}
