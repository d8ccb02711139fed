//! Test support for Qingnuan (being written).
