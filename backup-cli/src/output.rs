//! The terminal: machine output on stdout, and whether a person is there to answer.

use std::io::IsTerminal;

/// Print a line on stdout; a closed pipe (`| head`) is not an error.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// Whether standard input is a terminal (for the production confirmation prompt).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}
