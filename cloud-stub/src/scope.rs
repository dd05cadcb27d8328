//! Scopes (what an API key may touch) and roles (what a member may do). Which route needs
//! which is the table in [`crate::api::authz`].

use serde::{Deserialize, Serialize};

/// The eight API-key scopes of the contract, plus `org:admin` (organisation administration:
/// members, settings, API keys, bootstrap tokens, billing, deleting the org) and
/// `metrics:read` (the Prometheus metrics, for a scraper's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scope {
    ModelsRead = 0,
    ModelsWrite = 1,
    DevicesRead = 2,
    DevicesWrite = 3,
    RolloutsWrite = 4,
    FederationsAdmin = 5,
    TrainingWrite = 6,
    ExperimentsWrite = 7,
    OrgAdmin = 8,
    MetricsRead = 9,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Scope::ModelsRead,
        Scope::ModelsWrite,
        Scope::DevicesRead,
        Scope::DevicesWrite,
        Scope::RolloutsWrite,
        Scope::FederationsAdmin,
        Scope::TrainingWrite,
        Scope::ExperimentsWrite,
        Scope::OrgAdmin,
        Scope::MetricsRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ModelsRead => "models:read",
            Self::ModelsWrite => "models:write",
            Self::DevicesRead => "devices:read",
            Self::DevicesWrite => "devices:write",
            Self::RolloutsWrite => "rollouts:write",
            Self::FederationsAdmin => "federations:admin",
            Self::TrainingWrite => "training:write",
            Self::ExperimentsWrite => "experiments:write",
            Self::OrgAdmin => "org:admin",
            Self::MetricsRead => "metrics:read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A set of scopes as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeSet(u16);

impl ScopeSet {
    pub const fn all() -> Self {
        Self(0x3ff)
    }

    pub const fn with(self, s: Scope) -> Self {
        Self(self.0 | 1 << s as u8)
    }

    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |acc, s| acc | 1 << s as u8))
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & (1 << s as u8) != 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::as_str)
            .collect()
    }
}

/// Member roles, ordered: every right of a Member is also an Admin's, and every Admin's an
/// Owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_round_trip() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("models:delete"), None);
    }

    #[test]
    fn sets() {
        let s = ScopeSet::of([Scope::ModelsRead, Scope::RolloutsWrite]);
        assert!(s.contains(Scope::ModelsRead));
        assert!(!s.contains(Scope::ModelsWrite));
        assert!(s.is_subset_of(ScopeSet::all()));
        assert!(!ScopeSet::all().is_subset_of(s));
        assert_eq!(s.names(), ["models:read", "rollouts:write"]);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Member);
        assert_eq!(Role::parse("Admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
