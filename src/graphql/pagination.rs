//! Relay cursors: opaque base64url JSON tagged with the listing they belong to, so a cursor
//! from one listing is refused by another. Malformed cursors are BAD_USER_INPUT.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{AppError, AppResult};

/// The most items one page returns; larger `first` values are capped to it.
pub const MAX_PAGE: i32 = 100;

/// `first` as a page size: negative is refused; above `MAX_PAGE` is capped.
pub fn page_size(first: i32) -> AppResult<i64> {
    if first < 0 {
        return Err(AppError::bad_input("first", "first must not be negative"));
    }
    Ok(i64::from(first.min(MAX_PAGE)))
}

#[derive(Serialize, serde::Deserialize)]
struct Tagged<T> {
    k: String,
    v: T,
}

pub fn encode<T: Serialize>(kind: &str, value: &T) -> String {
    let tagged = Tagged {
        k: kind.to_owned(),
        v: value,
    };
    // Serialising plain data cannot fail; an empty cursor would be refused on the way back.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tagged).unwrap_or_default())
}

pub fn decode<T: DeserializeOwned>(kind: &str, cursor: &str) -> AppResult<T> {
    let invalid = || AppError::bad_input("after", "invalid cursor");
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| invalid())?;
    let tagged: Tagged<T> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if tagged.k != kind {
        return Err(invalid());
    }
    Ok(tagged.v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c = encode("msg", &7);
        assert_eq!(decode::<i32>("msg", &c).expect("round trip"), 7);
        assert!(decode::<i32>("conv", &c).is_err());
        assert!(decode::<i32>("msg", "!!!").is_err());
        assert!(decode::<i32>("msg", &URL_SAFE_NO_PAD.encode("{}")).is_err());
        assert_eq!(page_size(500).expect("capped"), 100);
        assert!(page_size(-1).is_err());
    }
}
