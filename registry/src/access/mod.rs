//! The access policy: the one place that answers "may this principal do this action on
//! this resource". The auth layer asks it for every request, the catalog and the
//! artifacts root ask it to filter their listings, and the built-in token service asks
//! it what to grant. It knows nothing of credentials or HTTP.
//!
//! A policy is a list of rules, each naming repositories (or artifact branches) by a
//! glob (`*` within one path component, `**` across components, `?` one character).
//! For a resource, the most specific matching rule wins: an exact name beats any glob,
//! then the glob with the most literal characters, then the one listed first. Within the
//! winning rule a principal gets the union of what it grants to anonymous clients, to any
//! authenticated user, to the user by name and to each of the user's groups. When no rule
//! matches, the policy's own `anonymous` and `authenticated` defaults apply. Admins may
//! do everything, including the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses a scope action; `*` is every action.
    pub fn parse_many(s: &str) -> Vec<Action> {
        match s {
            "*" => Action::ALL.to_vec(),
            "pull" => vec![Action::Pull],
            "push" => vec![Action::Push],
            "delete" => vec![Action::Delete],
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of actions (a small bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(0b111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    pub fn of(list: &[Action]) -> Actions {
        Actions(list.iter().fold(0, |acc, a| acc | Actions::bit(*a)))
    }

    pub fn has(self, a: Action) -> bool {
        self.0 & Actions::bit(a) != 0
    }

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn list(self) -> Vec<Action> {
        Action::ALL.into_iter().filter(|a| self.has(*a)).collect()
    }
}

/// What is being acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// An image repository (`/v2/<name>/...`).
    Repository(&'a str),
    /// A branch of the generic artifacts tree (`/artifacts/<branch>/...`).
    Branch(&'a str),
}

/// Who is asking, as far as the policy cares.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Anonymous,
    User(&'a str),
}

/// One rule of the policy (`access.rules[]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Glob over repository names (give this or `branches`).
    pub repositories: Option<String>,
    /// Glob over artifact branch names.
    pub branches: Option<String>,
    pub anonymous: Vec<Action>,
    pub authenticated: Vec<Action>,
    pub users: BTreeMap<String, Vec<Action>>,
    pub groups: BTreeMap<String, Vec<Action>>,
}

/// The `access:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Users who may do everything, including the admin API over TCP.
    pub admins: Vec<String>,
    /// Group name → members.
    pub groups: BTreeMap<String, Vec<String>>,
    /// What anonymous clients may do where no rule matches.
    pub anonymous: Vec<Action>,
    /// What any authenticated user may do where no rule matches.
    pub authenticated: Vec<Action>,
    pub rules: Vec<RuleConfig>,
}

impl Default for AccessConfig {
    /// Distribution's behaviour with htpasswd: any authenticated user may do everything
    /// on every repository, anonymous clients nothing, nobody is an admin.
    fn default() -> Self {
        AccessConfig {
            admins: Vec::new(),
            groups: BTreeMap::new(),
            anonymous: Vec::new(),
            authenticated: Action::ALL.to_vec(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Repository,
    Branch,
}

#[derive(Debug)]
struct Rule {
    kind: Kind,
    glob: Glob,
    anonymous: Actions,
    authenticated: Actions,
    users: BTreeMap<String, Actions>,
    groups: BTreeMap<String, Actions>,
}

/// The compiled policy.
#[derive(Debug)]
pub struct Policy {
    admins: BTreeSet<String>,
    /// user → groups.
    member_of: BTreeMap<String, Vec<String>>,
    anonymous: Actions,
    authenticated: Actions,
    rules: Vec<Rule>,
    /// Whether authentication is on; without it everyone may do everything but the
    /// admin API (which then needs the admin socket).
    open: bool,
}

impl Policy {
    /// The policy of a registry without authentication: everything is allowed, except
    /// the admin API over TCP.
    pub fn open() -> Policy {
        Policy {
            admins: BTreeSet::new(),
            member_of: BTreeMap::new(),
            anonymous: Actions::ALL,
            authenticated: Actions::ALL,
            rules: Vec::new(),
            open: true,
        }
    }

    /// Compiles `access:`; an error names the key.
    pub fn from_config(c: &AccessConfig) -> Result<Policy, (String, String)> {
        let mut member_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, members) in &c.groups {
            for m in members {
                member_of.entry(m.clone()).or_default().push(g.clone());
            }
        }
        let mut rules = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            let key = format!("access.rules[{i}]");
            let (kind, pattern) = match (&r.repositories, &r.branches) {
                (Some(p), None) => (Kind::Repository, p),
                (None, Some(p)) => (Kind::Branch, p),
                _ => {
                    return Err((
                        key,
                        "give exactly one of `repositories` or `branches`".into(),
                    ));
                }
            };
            let field = if kind == Kind::Repository {
                "repositories"
            } else {
                "branches"
            };
            let glob = Glob::parse(pattern).map_err(|m| (format!("{key}.{field}"), m))?;
            for g in r.groups.keys() {
                if !c.groups.contains_key(g) {
                    return Err((
                        format!("{key}.groups.{g}"),
                        "names a group that access.groups does not define".into(),
                    ));
                }
            }
            rules.push(Rule {
                kind,
                glob,
                anonymous: Actions::of(&r.anonymous),
                authenticated: Actions::of(&r.authenticated),
                users: r
                    .users
                    .iter()
                    .map(|(u, a)| (u.clone(), Actions::of(a)))
                    .collect(),
                groups: r
                    .groups
                    .iter()
                    .map(|(g, a)| (g.clone(), Actions::of(a)))
                    .collect(),
            });
        }
        Ok(Policy {
            admins: c.admins.iter().cloned().collect(),
            member_of,
            anonymous: Actions::of(&c.anonymous),
            authenticated: Actions::of(&c.authenticated),
            rules,
            open: false,
        })
    }

    /// Whether authentication is off (everything but admin is allowed).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether `who` is an admin (may use the admin API and do everything).
    pub fn is_admin(&self, who: Who<'_>) -> bool {
        match who {
            Who::User(u) => self.admins.contains(u),
            Who::Anonymous => false,
        }
    }

    /// What `who` may do on `resource`.
    pub fn allowed(&self, who: Who<'_>, resource: Resource<'_>) -> Actions {
        if self.open || self.is_admin(who) {
            return Actions::ALL;
        }
        let (kind, name) = match resource {
            Resource::Repository(n) => (Kind::Repository, n),
            Resource::Branch(b) => (Kind::Branch, b),
        };
        let rule = self
            .rules
            .iter()
            .filter(|r| r.kind == kind && r.glob.matches(name))
            .fold(None::<&Rule>, |best, r| match best {
                Some(b) if b.glob.specificity() >= r.glob.specificity() => Some(b),
                _ => Some(r),
            });
        let Some(rule) = rule else {
            return match who {
                Who::Anonymous => self.anonymous,
                Who::User(_) => self.anonymous.union(self.authenticated),
            };
        };
        let mut a = rule.anonymous;
        if let Who::User(u) = who {
            a = a.union(rule.authenticated);
            if let Some(x) = rule.users.get(u) {
                a = a.union(*x);
            }
            for g in self.member_of.get(u).into_iter().flatten() {
                if let Some(x) = rule.groups.get(g) {
                    a = a.union(*x);
                }
            }
        }
        a
    }

    /// Whether `who` may do `action` on `resource`.
    pub fn may(&self, who: Who<'_>, action: Action, resource: Resource<'_>) -> bool {
        self.allowed(who, resource).has(action)
    }
}

/// A repository or branch name glob.
#[derive(Debug, Clone)]
struct Glob {
    source: String,
    re: regex::Regex,
    literal: bool,
    literals: usize,
}

impl Glob {
    fn parse(p: &str) -> Result<Glob, String> {
        if p.is_empty() {
            return Err("empty pattern".into());
        }
        let mut re = String::from("^");
        let mut literals = 0;
        let mut literal = true;
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                    literal = false;
                }
                '*' => {
                    re.push_str("[^/]*");
                    literal = false;
                }
                '?' => {
                    re.push_str("[^/]");
                    literal = false;
                }
                c => {
                    literals += 1;
                    re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
                }
            }
        }
        re.push('$');
        Ok(Glob {
            source: p.to_owned(),
            re: regex::Regex::new(&re).map_err(|e| e.to_string())?,
            literal,
            literals,
        })
    }

    fn matches(&self, name: &str) -> bool {
        if self.literal {
            self.source == name
        } else {
            self.re.is_match(name)
        }
    }

    /// Exact names first, then more literal characters.
    fn specificity(&self) -> (bool, usize) {
        (self.literal, self.literals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let c: AccessConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::from_config(&c).unwrap()
    }

    #[test]
    fn most_specific_rule_wins() {
        let p = policy(
            "admins: [root]\ngroups:\n  devs: [bob]\nauthenticated: [pull]\nrules:\n\
             - repositories: 'team/**'\n  groups: {devs: [pull, push]}\n\
             - repositories: 'team/secret'\n  users: {carol: [pull]}\n\
             - repositories: 'public/*'\n  anonymous: [pull]\n\
             - branches: 'release-*'\n  users: {bob: [pull, push, delete]}\n",
        );
        let bob = Who::User("bob");
        let carol = Who::User("carol");
        use Resource::*;
        assert!(p.may(bob, Action::Push, Repository("team/app")));
        assert!(p.may(bob, Action::Push, Repository("team/a/b")));
        assert!(!p.may(bob, Action::Delete, Repository("team/app")));
        // The exact rule beats the glob: bob's group grant does not reach it.
        assert!(!p.may(bob, Action::Pull, Repository("team/secret")));
        assert!(p.may(carol, Action::Pull, Repository("team/secret")));
        // Default for authenticated users where no rule matches.
        assert!(p.may(carol, Action::Pull, Repository("other")));
        assert!(!p.may(carol, Action::Push, Repository("other")));
        assert!(!p.may(Who::Anonymous, Action::Pull, Repository("other")));
        assert!(p.may(Who::Anonymous, Action::Pull, Repository("public/x")));
        assert!(!p.may(Who::Anonymous, Action::Pull, Repository("public/x/y")));
        assert!(p.may(bob, Action::Pull, Repository("public/x")));
        assert!(p.may(bob, Action::Delete, Branch("release-1")));
        assert!(!p.may(carol, Action::Delete, Branch("release-1")));
        assert!(p.may(Who::User("root"), Action::Delete, Repository("team/secret")));
        assert!(p.is_admin(Who::User("root")));
        assert!(!p.is_admin(bob));
    }

    #[test]
    fn default_and_open_policies() {
        let p = Policy::from_config(&AccessConfig::default()).unwrap();
        assert_eq!(
            p.allowed(Who::User("x"), Resource::Repository("a")),
            Actions::ALL
        );
        assert_eq!(
            p.allowed(Who::Anonymous, Resource::Repository("a")),
            Actions::NONE
        );
        assert!(!p.is_admin(Who::User("x")));
        let o = Policy::open();
        assert_eq!(
            o.allowed(Who::Anonymous, Resource::Repository("a")),
            Actions::ALL
        );
        assert!(!o.is_admin(Who::Anonymous));
    }

    #[test]
    fn bad_rules_name_the_key() {
        let c: AccessConfig = serde_yaml_ng::from_str("rules:\n- users: {a: [pull]}\n").unwrap();
        assert_eq!(Policy::from_config(&c).unwrap_err().0, "access.rules[0]");
        let c: AccessConfig =
            serde_yaml_ng::from_str("rules:\n- repositories: x\n  groups: {g: [pull]}\n").unwrap();
        assert_eq!(
            Policy::from_config(&c).unwrap_err().0,
            "access.rules[0].groups.g"
        );
        assert!(
            serde_yaml_ng::from_str::<AccessConfig>(
                "rules:\n- repositories: x\n  anonymous: [write]\n"
            )
            .is_err()
        );
    }
}
