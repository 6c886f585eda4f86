//! siphon-proto: properties of the netstring codec and the lenient parser.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use siphon_proto::netstring::{DEFAULT_MAX, Decoder, encode};

proptest! {
    /// Encoding then decoding gives back the payloads, however the bytes are split.
    #[test]
    fn any_split_gives_the_same_frames(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), cuts in proptest::collection::vec(0usize..2000, 0..6)) {
        let mut wire = BytesMut::new();
        for p in &payloads {
            encode(p, &mut wire);
        }
        let wire = wire.freeze();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.sort_unstable();
        cuts.push(wire.len());
        let mut d = Decoder::new(DEFAULT_MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for c in cuts {
            buf.put_slice(&wire[at..c]);
            at = c;
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
        }
        prop_assert_eq!(got, payloads);
        prop_assert!(buf.is_empty());
    }

    /// Garbage never panics, and never yields more than it was given.
    #[test]
    fn garbage_is_an_error_or_frames(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut d = Decoder::new(64).skip_whitespace(true).allow_leading_zero(true);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut total = 0;
        while let Ok(Some(f)) = d.decode(&mut buf) {
            total += f.len();
            prop_assert!(f.len() <= 64);
        }
        prop_assert!(total <= bytes.len());
    }

    /// Single-quoted JSON means the same as its double-quoted form.
    #[test]
    fn lenient_equals_strict(keys in proptest::collection::vec("[a-z_]{1,8}", 1..5), vals in proptest::collection::vec("[a-zA-Z0-9 ]{0,10}", 1..5)) {
        let pairs: Vec<(String, String)> = keys.into_iter().zip(vals).collect();
        let single = format!("{{{}}}", pairs.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect::<Vec<_>>().join(", "));
        let double = single.replace('\'', "\"");
        prop_assert_eq!(siphon_proto::lenient::parse(&single).unwrap(), serde_json::from_str::<serde_json::Value>(&double).unwrap());
    }
}
