//! The registry CSV parser on arbitrary bytes; nothing may panic, errors stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qingnuan_server::registry::{parse_csv, ImportError};
use qingnuan_shared::policy::Policy;

fuzz_target!(|data: &[u8]| {
    match parse_csv(data, &Policy::beijing_2018()) {
        Ok(reg) => {
            for m in &reg.meters {
                assert!(m.valid_to.is_none_or(|to| to > m.valid_from));
            }
        }
        Err(ImportError::Invalid(rows)) => assert!(!rows.is_empty() && rows.len() <= 111),
        Err(ImportError::Store(_)) => panic!("parsing touched the store"),
    }
});
