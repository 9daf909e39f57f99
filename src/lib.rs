//! The root package of dispatch: thin binaries, examples and end-to-end tests.
