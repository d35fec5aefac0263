//! The Open Library parser against fixtures written in the real shapes
//! (`tests/fixtures/openlibrary/`) and, when the shared reference folder exists, against every
//! real captured response in it.

use std::path::{Path, PathBuf};

use bookworm::crawl::parse::{
    Entity, ParseError, RecordAnswer, parse_page, parse_record, parse_search, parse_subject,
};
use bookworm::message::{Label, Rel};
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openlibrary")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn entity(name: &str) -> Entity {
    match parse_record(&fixture(name)) {
        Ok(RecordAnswer::Entity(e)) => e,
        other => panic!("{name}: expected an entity, got {other:?}"),
    }
}

/// A work with a typed description gives the graph table's properties and its links.
#[test]
fn parses_a_work_with_a_typed_description() {
    let work = entity("work_typed_description.json");
    assert_eq!(work.key, "/works/OL45804W");
    assert_eq!(work.label, Label::Work);
    assert_eq!(work.props["title"], json!("Fantastic Mr Fox"));
    assert_eq!(work.props["subtitle"], json!("A Tale"));
    assert_eq!(work.props["first_publish_date"], json!("October 1, 1974"));
    assert_eq!(
        work.props["description"],
        json!("The main character of Fantastic Mr Fox is an anthropomorphic fox.")
    );
    assert_eq!(work.props["covers"], json!([6498519, 8904777]));
    assert_eq!(
        work.props.len(),
        5,
        "only graph-table properties: {:?}",
        work.props
    );
    assert_eq!(
        work.links.authors,
        ["/authors/OL34184A", "/authors/OL2623447A"]
    );
    assert_eq!(work.links.subjects.len(), 6);
}

/// Subjects that normalise to the same key are one subject, and the cap counts distinct keys.
#[test]
fn a_works_outgoing_edges_dedupe_subjects_and_cap_them() {
    let work = entity("work_typed_description.json");
    assert_eq!(
        work.links.subject_keys(),
        [
            "/subjects/animals",
            "/subjects/foxes",
            "/subjects/fiction",
            "/subjects/juvenile_fiction",
            "/subjects/science_fiction__fantasy",
        ]
    );
    let out = work.outgoing(3);
    assert_eq!(
        out,
        [
            (Rel::WRITTEN_BY, "/authors/OL34184A".to_owned()),
            (Rel::WRITTEN_BY, "/authors/OL2623447A".to_owned()),
            (Rel::ABOUT, "/subjects/animals".to_owned()),
            (Rel::ABOUT, "/subjects/foxes".to_owned()),
            (Rel::ABOUT, "/subjects/fiction".to_owned()),
        ]
    );
}

/// A plain-string description reads the same as a typed one.
#[test]
fn parses_a_work_with_a_plain_description() {
    let work = entity("work_plain_description.json");
    assert_eq!(
        work.props["description"],
        json!("An epic in three volumes.")
    );
    assert_eq!(work.links.authors, ["/authors/OL26320A"]);
    assert!(work.links.subjects.is_empty());
}

/// A work with nothing but its envelope is still a node, with no properties.
#[test]
fn a_bare_work_has_no_properties_and_no_links() {
    let work = entity("work_bare.json");
    assert!(work.props.is_empty());
    assert!(work.outgoing(10).is_empty());
}

/// Authors' `bio` in both text forms.
#[test]
fn parses_authors_with_both_bio_forms() {
    let typed = entity("author_typed_bio.json");
    assert_eq!(typed.label, Label::Author);
    assert_eq!(typed.props["name"], json!("Roald Dahl"));
    assert_eq!(typed.props["personal_name"], json!("Roald Dahl"));
    assert_eq!(typed.props["birth_date"], json!("13 September 1916"));
    assert_eq!(typed.props["death_date"], json!("23 November 1990"));
    assert_eq!(
        typed.props["bio"],
        json!("British novelist and short-story writer.")
    );
    assert!(
        typed.outgoing(10).is_empty(),
        "authors expand through works.json"
    );

    let plain = entity("author_plain_bio.json");
    assert_eq!(plain.props["bio"], json!("English writer and philologist."));
    assert!(!plain.props.contains_key("death_date"));
}

/// An edition gives its properties and links; the crawl follows its works and authors only.
#[test]
fn parses_an_edition_and_its_links() {
    let edition = entity("edition.json");
    assert_eq!(edition.label, Label::Edition);
    assert_eq!(edition.props["title"], json!("Fantastic Mr. Fox"));
    assert_eq!(edition.props["publish_date"], json!("October 1, 1988"));
    assert_eq!(edition.props["publishers"], json!(["Puffin"]));
    assert_eq!(edition.props["isbn_10"], json!(["0140328726"]));
    assert_eq!(edition.props["isbn_13"], json!(["9780140328721"]));
    assert_eq!(edition.props["number_of_pages"], json!(96));
    assert_eq!(
        edition.outgoing(10),
        [
            (Rel::EDITION_OF, "/works/OL45804W".to_owned()),
            (Rel::WRITTEN_BY, "/authors/OL34184A".to_owned()),
        ]
    );
    assert_eq!(
        edition.links.subject_keys(),
        ["/subjects/foxes_--_juvenile_fiction.", "/subjects/animals"]
    );
}

/// A merged record (HTTP 200, `/type/redirect`) names where to go instead.
#[test]
fn parses_a_redirect() {
    assert_eq!(
        parse_record(&fixture("redirect.json")).ok(),
        Some(RecordAnswer::Redirect {
            key: "/works/OL15832983W".to_owned(),
            location: "/works/OL15832982W".to_owned(),
        })
    );
}

/// A redirect that names no target cannot be followed: a parse failure.
#[test]
fn a_redirect_without_location_is_a_parse_error() {
    let err = parse_record(&fixture("redirect_without_location.json")).unwrap_err();
    assert!(matches!(err, ParseError::Shape { .. }), "{err:?}");
}

/// Deleted and missing records are typed outcomes, not errors.
#[test]
fn parses_delete_and_notfound() {
    assert_eq!(
        parse_record(&fixture("delete.json")).ok(),
        Some(RecordAnswer::Deleted {
            key: "/authors/OL9999999A".to_owned()
        })
    );
    assert_eq!(
        parse_record(&fixture("notfound.json")).ok(),
        Some(RecordAnswer::NotFound {
            key: Some("/works/OL0000000W".to_owned())
        })
    );
}

/// Bodies that cannot be a record at all are `parse` errors, never panics.
#[test]
fn malformed_and_mistyped_records_are_parse_errors() {
    for name in ["malformed.json", "unknown_type.json", "not_an_object.json"] {
        let err = parse_record(&fixture(name))
            .err()
            .unwrap_or_else(|| panic!("{name} should not parse"));
        assert_eq!(err.reason().as_str(), "parse", "{name}");
    }
    assert!(parse_record(b"").is_err());
    assert!(parse_record(b"<html>502 Bad Gateway</html>").is_err());
    assert!(
        parse_record(br#"{"type": {"key": "/type/work"}}"#).is_err(),
        "no key"
    );
    assert!(parse_page(&fixture("malformed.json")).is_err());
    assert!(parse_subject(&fixture("work_bare.json")).is_err());
    assert!(parse_search(&fixture("subject.json")).is_err());
}

/// A value of the wrong shape costs that value, not the record: the title that is a number
/// and the covers that are a string are left out and named, the rest is the node.
#[test]
fn mistyped_values_are_left_out_and_named() {
    let work = entity("wrong_types.json");
    assert_eq!(work.key, "/works/OL45805W");
    assert!(work.props.is_empty(), "{:?}", work.props);
    assert_eq!(work.dropped, ["title", "covers"]);
    let author = entity("wrong_text_type.json");
    assert_eq!(author.props["name"], json!("Someone"));
    assert!(!author.props.contains_key("bio"));
    assert_eq!(author.dropped, ["bio"]);
}

/// Real records carry a `null` among the covers or the subjects, and author roles without
/// `author`: each bad item is left out and named, the valid ones are kept in order, and the
/// record is still a node with its links.
#[test]
fn one_bad_item_of_a_list_costs_that_item_only() {
    let body = json!({
        "key": "/works/OL7W",
        "type": {"key": "/type/work"},
        "title": "Kept",
        "covers": [11, null, 12],
        "authors": [
            {"author": {"key": "/authors/OL1A"}, "type": {"key": "/type/author_role"}},
            {"type": {"key": "/type/author_role"}},
            {"author": {"key": "/works/OL9W"}},
            {"author": {"key": "/authors/OL2A"}}
        ],
        "subjects": ["Foxes", null, 7, "Hens"]
    });
    let Ok(RecordAnswer::Entity(work)) = parse_record(body.to_string().as_bytes()) else {
        panic!("the work should parse")
    };
    assert_eq!(work.props["title"], json!("Kept"));
    assert_eq!(work.props["covers"], json!([11, 12]));
    assert_eq!(work.links.authors, ["/authors/OL1A", "/authors/OL2A"]);
    assert_eq!(work.links.subjects, ["Foxes", "Hens"]);
    assert_eq!(
        work.dropped,
        [
            "covers[1]",
            "authors[1]",
            "authors[2]",
            "subjects[1]",
            "subjects[2]"
        ]
    );

    let edition = json!({
        "key": "/books/OL7M",
        "type": {"key": "/type/edition"},
        "isbn_13": [null, "9780140328721"],
        "authors": [{"name": "no key"}, {"key": "/authors/OL1A"}],
        "works": [{"key": "/works/OL7W"}, null],
        "number_of_pages": "many"
    });
    let Ok(RecordAnswer::Entity(edition)) = parse_record(edition.to_string().as_bytes()) else {
        panic!("the edition should parse")
    };
    assert_eq!(edition.props["isbn_13"], json!(["9780140328721"]));
    assert!(!edition.props.contains_key("number_of_pages"));
    assert_eq!(edition.links.authors, ["/authors/OL1A"]);
    assert_eq!(edition.links.works, ["/works/OL7W"]);
    assert_eq!(
        edition.dropped,
        ["isbn_13[0]", "number_of_pages", "authors[0]", "works[1]"]
    );
}

/// A list whose every item is bad leaves no property behind (a node never carries a list of
/// nothing valid), while a list that was empty stays empty; `null` fields are just absent.
#[test]
fn a_list_of_nothing_valid_is_no_property() {
    let body = json!({
        "key": "/works/OL8W", "type": {"key": "/type/work"},
        "covers": [null], "subtitle": null, "subjects": []
    });
    let Ok(RecordAnswer::Entity(work)) = parse_record(body.to_string().as_bytes()) else {
        panic!("the work should parse")
    };
    assert!(!work.props.contains_key("covers"));
    assert!(!work.props.contains_key("subtitle"));
    assert_eq!(work.dropped, ["covers[0]"]);
}

/// A key whose prefix names another kind than the record's type is not a node the graph
/// could file under one label: the record is a `parse` error, not a node the graph writer
/// would reject while the crawl counts it fetched.
#[test]
fn a_key_that_disagrees_with_its_type_is_a_parse_error() {
    for body in [
        json!({"key": "/works/OL1W", "type": {"key": "/type/author"}, "name": "x"}),
        json!({"key": "/authors/OL1A", "type": {"key": "/type/work"}, "title": "x"}),
        json!({"key": "/subjects/foxes", "type": {"key": "/type/edition"}}),
    ] {
        let err = parse_record(body.to_string().as_bytes())
            .expect_err("a key of another kind than its type");
        assert!(matches!(err, ParseError::Shape { .. }), "{body}: {err:?}");
        assert_eq!(err.reason().as_str(), "parse");
    }
}

/// One entry of a page, subject or search without its key costs that entry, not the page.
#[test]
fn one_bad_entry_of_a_list_page_costs_that_entry_only() {
    let page = json!({
        "links": {"self": "/authors/OL1A/works.json"}, "size": 3,
        "entries": [{"key": "/works/OL1W"}, {"title": "no key"}, null, {"key": "/works/OL2W"}]
    });
    let page = parse_page(page.to_string().as_bytes()).expect("the page parses");
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["/works/OL1W", "/works/OL2W"]);
    assert_eq!(page.dropped, ["entries[1]", "entries[2]"]);

    let subject = json!({
        "key": "/subjects/foxes", "name": "Foxes", "work_count": 2,
        "works": [{"key": "/works/OL1W", "authors": [{"name": "no key"}]}, {"key": "/works/OL2W"}, {"title": "no key"}]
    });
    let subject = parse_subject(subject.to_string().as_bytes()).expect("the subject parses");
    let keys: Vec<_> = subject.works.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["/works/OL1W", "/works/OL2W"]);
    assert!(subject.works[0].authors.is_empty());
    assert_eq!(subject.dropped, ["works[0].authors[0]", "works[2]"]);

    let search = json!({"numFound": 2, "docs": [{"title": "no key"}, {"key": "/works/OL3W"}]});
    let search = parse_search(search.to_string().as_bytes()).expect("the search parses");
    assert_eq!(search.work_keys(), ["/works/OL3W"]);
    assert_eq!(search.dropped, ["docs[0]"]);
}

/// Paged lists give their entries in order and the next page, absent on the last page.
#[test]
fn parses_paged_lists() {
    let works = parse_page(&fixture("author_works_page.json")).unwrap();
    assert_eq!(works.size, Some(5));
    assert_eq!(
        works.next.as_deref(),
        Some("/authors/OL34184A/works.json?limit=2&offset=2")
    );
    let keys: Vec<_> = works.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["/works/OL45804W", "/works/OL45883W"]);

    let editions = parse_page(&fixture("work_editions_last_page.json")).unwrap();
    assert_eq!(editions.next, None);
    assert_eq!(editions.entries[0].key, "/books/OL7353617M");
}

/// A subject page gives its name and works in order.
#[test]
fn parses_a_subject() {
    let subject = parse_subject(&fixture("subject.json")).unwrap();
    assert_eq!(subject.key, "/subjects/foxes");
    assert_eq!(subject.work_count, Some(1234));
    assert_eq!(subject.props()["name"], json!("Foxes"));
    assert_eq!(subject.works.len(), 2);
    assert_eq!(subject.works[0].authors[0].key, "/authors/OL34184A");
}

/// Search docs give work keys and full author keys from the bare ids.
#[test]
fn parses_search_results() {
    let found = parse_search(&fixture("search.json")).unwrap();
    assert_eq!(found.num_found, 3);
    assert_eq!(
        found.work_keys(),
        ["/works/OL45804W", "/works/OL2670823W", "/works/OL18417W"]
    );
    assert_eq!(found.docs[0].author_keys, ["/authors/OL34184A"]);
    assert!(found.docs[2].author_keys.is_empty());
}

/// Where the shared reference folder is, if any: `OPENLIBRARY_SAMPLES_DIR`, else
/// `../shared/openlibrary` from the crate root (the main checkout), else one level further
/// up (a worktree under `wt/`).
fn shared_samples() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("OPENLIBRARY_SAMPLES_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("../shared/openlibrary/samples"),
            root.join("../../shared/openlibrary/samples"),
        ])
        .find(|p| p.is_dir())
}

/// Every real captured response parses with the parser that its endpoint calls for.
#[test]
fn every_real_sample_parses() {
    let Some(dir) = shared_samples() else {
        eprintln!("no shared Open Library samples; skipping");
        return;
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        if name.starts_with("work_editions_") || name.starts_with("author_works_") {
            let page = parse_page(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!page.entries.is_empty(), "{name}");
            for entry in &page.entries {
                assert!(entry.key.starts_with("/books/") || entry.key.starts_with("/works/"));
            }
        } else if name.starts_with("search_") {
            let found = parse_search(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!found.work_keys().is_empty(), "{name}");
        } else if name.starts_with("subject_") {
            parse_subject(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("work_")
            || name.starts_with("author_")
            || name.starts_with("edition_")
        {
            match parse_record(&body) {
                Ok(RecordAnswer::Entity(e)) => {
                    assert!(!e.props.is_empty(), "{name}: no properties");
                    assert_eq!(Label::of_key(&e.key), Some(e.label), "{name}");
                }
                other => panic!("{name}: expected an entity, got {other:?}"),
            }
        } else {
            panic!("{name}: no parser is known for this sample; add one here");
        }
        seen += 1;
    }
    assert!(seen > 0, "no samples in {}", dir.display());
}

/// The real samples' specific values come through (both bio forms, editions' links).
#[test]
fn real_samples_give_the_expected_values() {
    let Some(dir) = shared_samples() else {
        eprintln!("no shared Open Library samples; skipping");
        return;
    };
    let read = |name: &str| std::fs::read(dir.join(name)).ok();
    if let Some(body) = read("author_OL1111490A.json") {
        let Ok(RecordAnswer::Entity(a)) = parse_record(&body) else {
            panic!("author_OL1111490A")
        };
        assert_eq!(
            a.props["bio"],
            json!("German dramaturge (1956\u{2013}2006)")
        );
    }
    if let Some(body) = read("author_OL101176A.json") {
        let Ok(RecordAnswer::Entity(a)) = parse_record(&body) else {
            panic!("author_OL101176A")
        };
        assert!(
            a.props["bio"]
                .as_str()
                .unwrap()
                .starts_with("**Omar Tarin**")
        );
    }
    if let Some(body) = read("edition_OL22951843M.json") {
        let Ok(RecordAnswer::Entity(e)) = parse_record(&body) else {
            panic!("edition_OL22951843M")
        };
        assert_eq!(e.links.works, ["/works/OL15832982W"]);
        assert_eq!(e.props["number_of_pages"], json!(491));
    }
    if let Some(body) = read("work_OL15832982W.json") {
        let Ok(RecordAnswer::Entity(w)) = parse_record(&body) else {
            panic!("work_OL15832982W")
        };
        assert_eq!(w.links.authors, ["/authors/OL382982A"]);
        assert_eq!(w.props["covers"], json!([6796986, 3843137]));
    }
}
