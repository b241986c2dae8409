//! Any text as a devices file: never a panic; a refusal names a line of the text; an
//! accepted file lists each id once, finds every id it lists, and gives each shard's
//! devices dense indexes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbeat::core::owner::owner;
use ringbeat::core::registry::Registry;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let shards = 1 + data.first().map_or(0, |b| b % 4) as u32;
    match Registry::parse(text, shards) {
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1)),
        Ok(r) => {
            let mut per_shard = vec![Vec::new(); shards as usize];
            for (id, e) in r.iter() {
                assert!(id != 0);
                assert!(r.get(id).is_some_and(|found| std::ptr::eq(found, e)));
                per_shard[owner(id, shards) as usize].push(e.local());
            }
            for (s, mut locals) in per_shard.into_iter().enumerate() {
                locals.sort_unstable();
                assert_eq!(locals, (0..r.owned_by(s as u32)).collect::<Vec<_>>());
            }
        }
    }
});
