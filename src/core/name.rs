//! The temp file's name: built by [`temp_name`], recognised by
//! [`is_temp_name`]. Nothing else in the crate, its tests or `sweep` spells
//! the pattern out.

use std::ffi::{OsStr, OsString};

/// Characters in the random part.
pub(crate) const RANDOM_LEN: usize = 12;
const SUFFIX: &str = ".tmp";
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The longest file name most filesystems accept, in bytes.
const NAME_MAX: usize = 255;

/// `.{name}.{random}.tmp`: hidden, recognisable, and unpredictable
/// (`RANDOM_LEN` characters from the kernel's random source, about 71 bits).
/// `name` is cut short when the whole would exceed `NAME_MAX` bytes.
pub(crate) fn temp_name(target_name: &OsStr) -> OsString {
    let budget = NAME_MAX - (1 + 1 + RANDOM_LEN + SUFFIX.len());
    hidden(&truncate(target_name, budget), SUFFIX)
}

/// `.{name}.{random}.{suffix}`.
fn hidden(name: &OsStr, suffix: &str) -> OsString {
    let mut random = [0u8; RANDOM_LEN];
    crate::sys::random_bytes(&mut random);
    for b in &mut random {
        // 256 is not a multiple of 62: the tiny bias costs well under a bit.
        *b = ALPHABET[usize::from(*b) % ALPHABET.len()];
    }
    let mut out = OsString::from(".");
    out.push(name);
    out.push(".");
    out.push(std::str::from_utf8(&random).expect("alphabet is ASCII"));
    out.push(suffix);
    out
}

const LOCK_SUFFIX: &str = ".lock";

/// `.{name}.lock`: the lock file beside a target that
/// [`update`](crate::update) serialises on. Fixed, so that every process
/// finds the same one; `name` is cut short when the whole would exceed
/// `NAME_MAX` bytes (two long names sharing the kept prefix then share a
/// lock, which costs only waiting). Not shaped like a temp name: `sweep`
/// leaves it alone.
pub(crate) fn lock_name(target_name: &OsStr) -> OsString {
    let mut out = OsString::from(".");
    out.push(truncate(target_name, NAME_MAX - 1 - LOCK_SUFFIX.len()));
    out.push(LOCK_SUFFIX);
    out
}

const ASIDE_SUFFIX: &str = ".old";

/// `.{name}.{random}.old`: where the fallback of a replacing
/// `AsyncAtomicDir` commit moves the old tree for a moment, named so that
/// [`aside_target`] gives `target_name` back whole (for `sweep` to put it
/// back, should the process die before the new tree is in). `None` when
/// `target_name` is too long for that.
pub(crate) fn aside_name(target_name: &OsStr) -> Option<OsString> {
    let fits = target_name.len() + 1 + 1 + RANDOM_LEN + ASIDE_SUFFIX.len() <= NAME_MAX;
    fits.then(|| hidden(target_name, ASIDE_SUFFIX))
}

/// The target name in a name [`aside_name`] could have built.
#[cfg(unix)]
pub(crate) fn aside_target(name: &OsStr) -> Option<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_encoded_bytes();
    let rest = b
        .strip_prefix(b".")?
        .strip_suffix(ASIDE_SUFFIX.as_bytes())?;
    if rest.len() < RANDOM_LEN + 2 {
        return None;
    }
    let (head, random) = rest.split_at(rest.len() - RANDOM_LEN);
    let target = head.strip_suffix(b".")?;
    if target.is_empty() || !random.iter().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(OsStr::from_bytes(target))
}

/// Whether `name` is one [`temp_name`] could have built.
pub(crate) fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    let Some(rest) = b
        .strip_prefix(b".")
        .and_then(|r| r.strip_suffix(SUFFIX.as_bytes()))
    else {
        return false;
    };
    // rest = "{name}.{random}" with a non-empty name
    if rest.len() < RANDOM_LEN + 2 {
        return false;
    }
    let (head, random) = rest.split_at(rest.len() - RANDOM_LEN);
    head.ends_with(b".") && random.iter().all(|c| c.is_ascii_alphanumeric())
}

/// Whether `name` is one [`temp_name`] could have built for
/// `target_name`: the leftovers of that one file.
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
pub(crate) fn is_temp_name_of(name: &OsStr, target_name: &OsStr) -> bool {
    let budget = NAME_MAX - (1 + 1 + RANDOM_LEN + SUFFIX.len());
    let kept = truncate(target_name, budget);
    let b = name.as_encoded_bytes();
    let head = b
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(kept.as_encoded_bytes()));
    // What follows the kept name is exactly `.{random}.tmp`.
    is_temp_name(name) && head.is_some_and(|rest| rest.len() == 1 + RANDOM_LEN + SUFFIX.len())
}

/// The longest prefix of `name` of at most `max` bytes, cut on a character
/// boundary when the name is UTF-8.
fn truncate(name: &OsStr, max: usize) -> OsString {
    if name.len() <= max {
        return name.to_owned();
    }
    if let Some(s) = name.to_str() {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        return OsString::from(&s[..end]);
    }
    truncate_bytes(name, max)
}

#[cfg(unix)]
fn truncate_bytes(name: &OsStr, max: usize) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(&name.as_bytes()[..max]).to_owned()
}

#[cfg(not(unix))]
fn truncate_bytes(name: &OsStr, max: usize) -> OsString {
    let lossy = name.to_string_lossy();
    truncate(OsStr::new(lossy.as_ref()), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shape_is_hidden_and_recognised() {
        let n = temp_name(OsStr::new("state.json"));
        let s = n.to_str().unwrap();
        assert!(s.starts_with(".state.json."), "{s}");
        assert!(s.ends_with(".tmp"), "{s}");
        assert_eq!(s.len(), ".state.json.".len() + RANDOM_LEN + 4);
        assert!(is_temp_name(&n));
    }

    #[test]
    fn a_temp_name_is_known_as_its_own_targets_only() {
        let of = |t: &str| temp_name(OsStr::new(t));
        let state = OsStr::new("state.json");
        assert!(is_temp_name_of(&of("state.json"), state));
        // Another file's, even one whose name starts or ends the same.
        assert!(!is_temp_name_of(&of("state.json.bak"), state));
        assert!(!is_temp_name_of(&of("state"), state));
        assert!(!is_temp_name_of(&of("x.state.json"), state));
        assert!(!is_temp_name_of(OsStr::new(".state.json.lock"), state));
        // A long name is known by the prefix its temp names keep.
        let long = "é".repeat(200);
        assert!(is_temp_name_of(&of(&long), OsStr::new(&long)));
        assert!(!is_temp_name_of(&of(&long), OsStr::new(&"é".repeat(100))));
    }

    #[test]
    fn names_differ() {
        let a = temp_name(OsStr::new("x"));
        let b = temp_name(OsStr::new("x"));
        assert_ne!(a, b);
    }

    #[test]
    fn long_names_fit_name_max() {
        let long = "é".repeat(200); // 400 bytes
        let n = temp_name(OsStr::new(&long));
        assert!(n.len() <= NAME_MAX, "{}", n.len());
        assert!(n.to_str().is_some(), "cut on a char boundary");
        assert!(is_temp_name(&n));
    }

    #[test]
    fn other_names_are_not_temp_names() {
        for n in [
            "state.json",
            ".state.json",
            ".state.json.tmp",
            ".x.short.tmp",
            ".x.ABCDEFGHIJK!.tmp",
            "..ABCDEFGHIJKL.tmp",
            "x.ABCDEFGHIJKL.tmp",
        ] {
            assert!(!is_temp_name(OsStr::new(n)), "{n}");
        }
        assert!(is_temp_name(OsStr::new(".x.ABCDEFGHIJKL.tmp")));
    }

    #[cfg(unix)]
    #[test]
    fn aside_names_give_their_target_back() {
        let n = aside_name(OsStr::new("ab12")).unwrap();
        assert!(n.to_str().unwrap().starts_with(".ab12.") && n.to_str().unwrap().ends_with(".old"));
        assert_eq!(aside_target(&n), Some(OsStr::new("ab12")));
        assert!(!is_temp_name(&n), "not a temp name: sweep treats it apart");
        assert!(aside_name(OsStr::new(&"x".repeat(240))).is_none());
        for other in [
            ".ab12.old",
            "..ABCDEFGHIJKL.old",
            ".a.ABCDEFGHIJK!.old",
            "a.ABCDEFGHIJKL.old",
        ] {
            assert_eq!(aside_target(OsStr::new(other)), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn every_built_name_is_recognised(name in "[^/\0]{1,300}") {
            let n = temp_name(OsStr::new(&name));
            prop_assert!(is_temp_name(&n));
            prop_assert!(n.len() <= NAME_MAX);
        }
    }
}
