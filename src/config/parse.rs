//! Value parsers for clap: each turns one variable's text into a value or says why it cannot,
//! so an invalid setting stops the process at start-up with exit code 2 naming it.

use std::time::Duration;

use url::Url;

/// Parses a humantime duration (`90s`, `5m`, `100ms`) for clap.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration like 90s or 5m: {e}"))
}

/// Parses a count that must be at least one: a zero limit would silently stop all work.
pub fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Parses a count that must be at least one, as a `u32`.
pub fn parse_positive_u32(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Parses a share between 0 and 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(_) => Err("must be between 0 and 1".to_owned()),
        Err(e) => Err(format!("expected a number like 0.2: {e}")),
    }
}

/// Parses `OPENLIBRARY_BASE_URL` for clap: an http(s) URL of an origin (nothing after `/`).
pub fn parse_origin(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text:?}: expected http(s)://host[:port]"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: expected an origin only, without a path"));
    }
    Ok(url)
}

/// Parses `USER_AGENT` for clap: printable ASCII, naming the application first and then a
/// contact (an email address or an http(s) URL), as Open Library asks of crawlers.
pub fn parse_user_agent(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be non-empty printable ASCII".to_owned());
    }
    let application = text
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default();
    if application.is_empty()
        || application.contains('@')
        || application.contains("://")
        || !application.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Err(
            "must start with the application's name, e.g. \"MyCrawler/1.0 (ops@example.org)\""
                .to_owned(),
        );
    }
    let has_url = text.contains("http://") || text.contains("https://");
    let has_email = text
        .split(|c: char| c.is_whitespace() || "();<>,".contains(c))
        .any(|word| {
            let word = word.strip_prefix("mailto:").unwrap_or(word);
            word.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty() && domain.contains('.') && !domain.ends_with('.')
            })
        });
    if has_url || has_email {
        Ok(text.to_owned())
    } else {
        Err(
            "must name a contact (an email address or an http(s) URL), e.g. \
             \"RelentlessBookworm/0.1 (+https://example.org/bot; ops@example.org)\""
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_USER_AGENT;

    /// A User-Agent must name a contact; the default does.
    #[test]
    fn user_agent_needs_a_contact() {
        assert!(parse_user_agent(DEFAULT_USER_AGENT).is_ok());
        assert!(parse_user_agent("MyBot/1.0 (ops@example.org)").is_ok());
        assert!(parse_user_agent("MyBot/1.0 (+https://example.org/bot)").is_ok());
        assert!(parse_user_agent("MyBot/1.0 (mailto:ops@example.org)").is_ok());
        assert!(parse_user_agent("MyBot/1.0").is_err());
        assert!(parse_user_agent("MyBot/1.0 (me@localhost)").is_err());
        assert!(parse_user_agent("").is_err());
        assert!(parse_user_agent("(ops@example.org)").is_err());
        assert!(parse_user_agent("ops@example.org").is_err());
        assert!(parse_user_agent("https://example.org/bot").is_err());
        assert!(parse_user_agent("Bot\n(ops@example.org)").is_err());
    }

    /// The base URL must be a bare http(s) origin.
    #[test]
    fn base_url_must_be_an_origin() {
        assert!(parse_origin("https://openlibrary.org").is_ok());
        assert!(parse_origin("http://127.0.0.1:8080/").is_ok());
        assert!(parse_origin("https://openlibrary.org/works").is_err());
        assert!(parse_origin("ftp://openlibrary.org").is_err());
    }
}
