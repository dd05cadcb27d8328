//! Device ids: 1-128 characters of `[A-Za-z0-9._-]`, so they are safe inside MQTT topics,
//! file names and URL paths.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A validated device id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is longer than {MAX_DEVICE_ID_LEN} characters")]
    TooLong,
    #[error("device id may contain only A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadCharacter,
    #[error("device id may not be '.' or '..'")]
    DotName,
}

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        if s.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(DeviceIdError::BadCharacter);
        }
        if s == "." || s == ".." {
            return Err(DeviceIdError::DotName);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `octomil/v1/devices/{id}/revocation`
    pub fn revocation_topic(&self) -> String {
        format!("octomil/v1/devices/{}/revocation", self.0)
    }

    /// `octomil/v1/devices/{id}/status`
    pub fn status_topic(&self) -> String {
        format!("octomil/v1/devices/{}/status", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "edge-01", "rpi4.lab_3", &"x".repeat(128)] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            ("", DeviceIdError::Empty),
            (&*"x".repeat(129), DeviceIdError::TooLong),
            ("a/b", DeviceIdError::BadCharacter),
            ("a+b", DeviceIdError::BadCharacter),
            ("a#", DeviceIdError::BadCharacter),
            ("dev ice", DeviceIdError::BadCharacter),
            ("dévice", DeviceIdError::BadCharacter),
            ("..", DeviceIdError::DotName),
        ];
        for (input, want) in cases {
            assert_eq!(DeviceId::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn topics() {
        let id = DeviceId::parse("d1").unwrap();
        assert_eq!(id.revocation_topic(), "octomil/v1/devices/d1/revocation");
        assert_eq!(id.status_topic(), "octomil/v1/devices/d1/status");
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"no/slash\"").is_err());
    }
}
