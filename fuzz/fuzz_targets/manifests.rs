//! `check`'s manifest reader (`check::input::read_stream`, over `check::yaml`) on arbitrary text,
//! as CI feeds it manifests nobody reviewed: no panic, no hang (aliases are bounded), and every
//! document that reads is written back by `check --fix`'s writer (`check::yaml::write`) as YAML
//! that reads back as the same JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stateful_guard::check::input::read_stream;
use stateful_guard::check::yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (docs, _errors) = read_stream(text, "fuzz");
    for doc in docs {
        let written = yaml::write(&doc.value);
        let read = yaml::read(&written)
            .unwrap_or_else(|e| panic!("--fix's output does not read back: {e:?}\n{written}"));
        assert_eq!(
            read.len(),
            1,
            "one document written, read as {}:\n{written}",
            read.len()
        );
        let again = read[0]
            .1
            .as_ref()
            .unwrap_or_else(|e| panic!("--fix's output does not read back: {e:?}\n{written}"));
        assert_eq!(again, &doc.value, "read back differently:\n{written}");
    }
});
