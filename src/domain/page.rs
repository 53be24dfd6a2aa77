//! The one listing contract (DESIGN.md "Listings"): every list answers `{items, next_cursor}`,
//! takes `limit` (1 ..= 1000) and an opaque `cursor`, and `next_cursor` is null on the last
//! page. Cursors are base64url of a position only this service reads back: the last name of
//! the page for name-ordered lists, `<score>:<id>` for the dead-letter list, a version for
//! history.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};

/// Most items in one listing page.
pub const MAX_PAGE: usize = 1000;

/// `limit` and `cursor` as a list endpoint takes them in its query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_cursor` of the previous page (opaque).
    #[param(max_length = 2048)]
    pub cursor: Option<String>,
    /// Page size, 1 ..= 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Opaque cursor text for a position.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// The position a cursor stands for; a cursor this service did not issue is a 400.
pub fn decode_cursor(c: Option<&str>) -> ApiResult<Option<String>> {
    match c {
        None | Some("") => Ok(None),
        Some(c) => URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(not_ours),
    }
}

pub fn not_ours() -> ApiError {
    ApiError::bad_request("cursor is not one this service issued")
}

/// `limit` of a listing: default `default`, 1 ..= 1000.
pub fn page_limit(limit: Option<usize>, default: usize) -> ApiResult<usize> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    Ok(limit)
}

/// A checked page request over a list ordered by name.
#[derive(Debug, Clone)]
pub struct Page {
    /// Names up to and including this one were on earlier pages.
    pub after: Option<String>,
    pub limit: usize,
}

impl Page {
    pub fn parse(q: &PageQuery) -> ApiResult<Self> {
        Ok(Self {
            after: decode_cursor(q.cursor.as_deref())?,
            limit: page_limit(q.limit, 100)?,
        })
    }

    /// Whether `name` comes after the cursor.
    pub fn wants(&self, name: &str) -> bool {
        self.after.as_deref().is_none_or(|a| name > a)
    }

    /// One page of `sorted` names (ascending): those after the cursor, at most `limit`, and the
    /// cursor of the next page when names remain.
    pub fn of_names(&self, sorted: &[String]) -> (Vec<String>, Option<String>) {
        let start = sorted.partition_point(|n| !self.wants(n));
        let rest = &sorted[start..];
        let page: Vec<String> = rest.iter().take(self.limit).cloned().collect();
        let next = (rest.len() > self.limit)
            .then(|| page.last().map(|n| encode_cursor(n)))
            .flatten();
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i:03}")).collect()
    }

    #[test]
    fn pages_walk_every_name_once() {
        let all = names(7);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = Page::parse(&PageQuery {
                cursor: cursor.clone(),
                limit: Some(3),
            })
            .unwrap();
            let (items, next) = p.of_names(&all);
            seen.extend(items);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn the_last_full_page_has_no_cursor() {
        let p = Page::parse(&PageQuery {
            cursor: None,
            limit: Some(3),
        })
        .unwrap();
        assert_eq!(p.of_names(&names(3)).1, None);
        assert!(p.of_names(&names(4)).1.is_some());
    }

    #[test]
    fn foreign_cursors_and_limits_are_refused() {
        for (cursor, limit) in [(Some("***"), None), (None, Some(0)), (None, Some(1001))] {
            let q = PageQuery {
                cursor: cursor.map(str::to_string),
                limit,
            };
            assert!(Page::parse(&q).is_err(), "{q:?}");
        }
    }
}
