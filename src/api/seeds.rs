//! Which seeds a crawl may start from, and the job key each becomes.

use url::Url;

/// Free-text seeds are 3 to 200 characters: Open Library's search refuses fewer than 3.
const TEXT_SEED_CHARS: std::ops::RangeInclusive<usize> = 3..=200;

/// Turns a seed from a request into the key its job crawls, or says why it is not one.
///
/// Accepted: a key (`/works/OL1W`, `/authors/OL1A`, `/books/OL1M`), a bare id (`OL1W`), an
/// Open Library URL of one on the configured origin (`https://openlibrary.org/works/OL1W/Title`,
/// with or without `.json`), or free text of 3 to 200 characters, which becomes
/// `search:<text>`. Anything that looks like a URL must be on the origin.
pub fn seed_key(seed: &str, origin: &Url) -> Result<String, String> {
    let trimmed = seed.trim();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        let url = Url::parse(trimmed).map_err(|e| format!("not a valid URL: {e}"))?;
        let other_port = url
            .port()
            .is_some_and(|p| Some(p) != origin.port_or_known_default());
        if url.host_str() != origin.host_str() || other_port {
            return Err(format!(
                "URL is not on {}",
                origin.origin().ascii_serialization()
            ));
        }
        return entity_key(url.path())
            .ok_or_else(|| "URL names no work, author or edition".to_owned());
    }
    if trimmed.starts_with('/') {
        return entity_key(trimmed).ok_or_else(|| "not a work, author or edition key".to_owned());
    }
    if let Some(key) = bare_id_key(trimmed) {
        return Ok(key);
    }
    let chars = trimmed.chars().count();
    if !TEXT_SEED_CHARS.contains(&chars) {
        return Err(format!(
            "free text must be {} to {} characters",
            TEXT_SEED_CHARS.start(),
            TEXT_SEED_CHARS.end()
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("free text must not contain control characters".to_owned());
    }
    Ok(format!("search:{trimmed}"))
}

/// `/works/OL1W/Some_Title.json` → `/works/OL1W`.
fn entity_key(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    let (kind, id) = (parts.next()?, parts.next()?);
    let id = id.strip_suffix(".json").unwrap_or(id);
    let suffix = match kind {
        "works" => 'W',
        "authors" => 'A',
        "books" => 'M',
        _ => return None,
    };
    let digits = id.strip_prefix("OL")?.strip_suffix(suffix)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("/{kind}/{id}"))
}

/// `OL1W` → `/works/OL1W`.
fn bare_id_key(id: &str) -> Option<String> {
    let kind = match id.chars().last()? {
        'W' => "works",
        'A' => "authors",
        'M' => "books",
        _ => return None,
    };
    entity_key(&format!("/{kind}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Url {
        Url::parse("https://openlibrary.org").expect("valid origin")
    }

    #[test]
    fn seeds_become_keys() {
        let cases = [
            ("/works/OL45804W", "/works/OL45804W"),
            ("OL34184A", "/authors/OL34184A"),
            (
                "https://openlibrary.org/books/OL7353617M/Fantastic_Mr._Fox",
                "/books/OL7353617M",
            ),
            (
                "https://openlibrary.org/works/OL45804W.json",
                "/works/OL45804W",
            ),
            ("the time war", "search:the time war"),
        ];
        for (seed, key) in cases {
            assert_eq!(seed_key(seed, &origin()).as_deref(), Ok(key), "{seed}");
        }
    }

    #[test]
    fn bad_seeds_are_refused_with_a_reason() {
        for seed in [
            "https://example.com/works/OL1W",
            "http://openlibrary.org:8080/works/OL1W",
            "/subjects/love",
            "/works/OLxW",
            "ab",
            &"x".repeat(201),
        ] {
            assert!(
                seed_key(seed, &origin()).is_err(),
                "{seed} should be refused"
            );
        }
    }
}
