//! # Progress bars for long offline work
//!
//! `assimd experiment` runs thousands of cycles for minutes: a bar on stderr shows the cycle, the
//! rate, the time left and the running analysis RMSE. It draws only when stderr is a terminal, so
//! logs, pipes, CI and the training pipeline (which reads stdout) see nothing of it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps prefixed by `what`; hidden unless stderr is a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    bar_on(len, what, std::io::stderr().is_terminal())
}

/// As [`bar`], drawn on stderr only when `visible`.
pub fn bar_on(len: u64, what: &str, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let b = ProgressBar::with_draw_target(Some(len), target);
    // The template is a constant known to parse (checked by the unit test below).
    b.set_style(ProgressStyle::with_template(TEMPLATE).expect("the progress template parses"));
    b.set_prefix(what.to_string());
    b
}

const TEMPLATE: &str =
    "{prefix} {wide_bar} {pos}/{len} cycles [{elapsed_precise}, {per_sec}, {eta} left] {msg}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_counts_without_drawing() {
        let b = bar_on(10, "test", false);
        assert!(b.is_hidden());
        b.inc(3);
        assert_eq!(b.position(), 3);
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
