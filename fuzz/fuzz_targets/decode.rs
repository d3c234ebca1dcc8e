//! Feeds arbitrary bytes to `kiln_proto::decode`. It must never panic, and any
//! message it accepts must survive a re-encode: `decode(encode(m)) == m`, with
//! encoding a fixed point from then on.
#![no_main]

use kiln_proto::{Limits, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(m1) = decode(data, &limits) else {
        return;
    };
    let e1 = encode(&m1);
    let m2 = match decode(&e1, &limits) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded message does not decode: {e}\n{m1:?}"),
    };
    // rmpv compares floats with ==, so a NaN never equals itself: fall back to
    // comparing the Debug text, which prints NaN the same way each time.
    if m1 != m2 {
        assert_eq!(format!("{m1:?}"), format!("{m2:?}"));
    }
    assert_eq!(encode(&m2), e1, "encoding is not a fixed point");
});
