//! BuildKit-faithful Dockerfile front end: parse Dockerfile text into a tree
//! with spans, expand words the way BuildKit's shell lexer does, and work
//! out stages, build arguments and the stage graph.
//!
//! ```
//! use dockerfile_parse::{parse, Arguments};
//!
//! let df = parse("FROM alpine AS base\nRUN echo hi \\\n  there\nCMD [\"sh\"]\n")?;
//! assert_eq!(df.instructions.len(), 3);
//! assert_eq!(df.instructions[1].args, Arguments::Text("echo hi   there".into()));
//! assert_eq!(df.instructions[1].span.line, 2);
//! assert_eq!(df.instructions[1].span.end_line, 3);
//! // BuildKit's own AST dump format:
//! assert_eq!(df.dump(), "(from \"alpine\" \"AS\" \"base\")\n(run \"echo hi   there\")\n(cmd \"sh\")\n");
//! # Ok::<(), dockerfile_parse::ParseError>(())
//! ```
//!
//! Layers:
//!
//! - [`parse`] gives a [`Dockerfile`]: directives, and per instruction its
//!   flags and arguments in BuildKit's shapes ([`Arguments`]), heredoc bodies
//!   and a [`Span`]. [`Dockerfile::dump`] prints BuildKit's test-dump format;
//!   `Display` prints a Dockerfile that parses back to the same tree.
//! - [`shell`] is BuildKit's word-expansion lexer.
//! - [`command`] turns instructions into typed commands with flag
//!   validation (`FROM --platform`, `COPY --from`, `RUN --mount`, ...).
//! - [`stages`] groups commands into stages, applies global `ARG`s and
//!   build arguments, selects a target and computes stage dependencies.
//! - [`dockerignore`] matches paths against `.dockerignore` patterns with
//!   Docker's semantics.
//!
//! Fidelity notes (where this crate knowingly differs from BuildKit):
//!
//! - Input is `&str`; BuildKit reads bytes. `--flag` words are split on
//!   characters, where BuildKit splits on bytes (which can cut a multi-byte
//!   character whose UTF-8 bytes include 0x85 or 0xA0).
//! - Exec form needs the whole rest of the line to be one JSON array
//!   (trailing white space allowed), as Go's `json.Unmarshal` does.
//! - Limits instead of unbounded recursion: `ONBUILD` nests at most 16 deep
//!   and `${...}` expansions at most 128 deep; deeper input is an error.
//! - The printer cannot write an instruction with an empty name (a file
//!   that ends in a lone continuation) and drops comments.

mod ast;
mod class;
pub mod command;
pub mod dockerignore;
mod dump;
mod json;
mod parser;
pub mod shell;
pub mod stages;

pub use ast::{
    Arguments, CheckConfig, CheckError, Directives, Dockerfile, Heredoc, Instruction, KeyValue, Keyword, Span, Warning,
};
pub use dump::{dump_instruction, go_quote};
pub use parser::{ParseError, parse};
