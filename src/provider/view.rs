//! A shared, recent listing of one account's servers, so that many actions in flight are
//! watched through one paginated list instead of one GET each.
//!
//! A look at a server is answered from the latest listing when that listing started after the
//! action was sent and is younger than the account's poll interval. Otherwise a new listing is
//! made only when it is cheaper than what it replaces: when the looks of the current window
//! outnumber the pages a listing costs. Looks that wait while a listing is under way share it.
//! A server missing from a listing is never taken as gone from it: the caller asks for it by id.
//!
//! Times are the database's clock, as the caller passes them: `since` is when the action's
//! intent was stored, `now` the time of the step, and a listing counts as started at the
//! `now` of the step or resync that made it (a little before it really started, so never
//! mistaken for a listing made after an action it may predate).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::provider::{Result, Server};

/// A listing of an account's servers by id, shared (not copied) by whoever reads it.
pub type Listing = Arc<HashMap<String, Server>>;

/// The listing of `servers`, taking them over.
pub fn listing(servers: Vec<Server>) -> Listing {
    Arc::new(servers.into_iter().map(|s| (s.id.clone(), s)).collect())
}

#[derive(Debug)]
struct Snapshot {
    started: DateTime<Utc>,
    servers: Listing,
    cost: u32,
}

#[derive(Debug, Default)]
struct State {
    latest: Option<Snapshot>,
    window_start: Option<DateTime<Utc>>,
    looks: u32,
}

/// What a look found.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// The server, as a fresh enough listing shows it.
    Listed(Server),
    /// No fresh listing shows it: ask the provider for this server.
    Ask,
}

/// The shared listing of one account.
#[derive(Debug, Default)]
pub struct View {
    state: Mutex<State>,
}

impl View {
    /// Forgets the latest listing: a new one is being made (the periodic resync), and two
    /// listings of a large account need not be held at once.
    pub async fn forget(&self) {
        self.state.lock().await.latest = None;
    }

    /// Offers a listing made elsewhere (the periodic resync), started at `started`.
    pub async fn offer(&self, started: DateTime<Utc>, servers: Listing, cost: u32) {
        let mut s = self.state.lock().await;
        if s.latest.as_ref().is_none_or(|l| l.started < started) {
            s.latest = Some(Snapshot {
                started,
                servers,
                cost,
            });
            s.looks = 0;
            s.window_start = Some(started);
        }
    }

    /// Looks at `server_id` for an action sent at `since`, at `now`; `list` makes a listing and
    /// `cost_of` tells how many requests a listing of that many servers costs.
    ///
    /// # Errors
    /// The listing's error, when one was made and failed.
    pub async fn look<F, Fut>(
        &self,
        server_id: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        max_age: Duration,
        list: F,
        cost_of: impl Fn(usize) -> u32,
    ) -> Result<Look>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Server>>>,
    {
        let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let mut s = self.state.lock().await;
        if let Some(l) = &s.latest {
            if l.started >= since && now - l.started <= max_age {
                return Ok(l
                    .servers
                    .get(server_id)
                    .map_or(Look::Ask, |srv| Look::Listed(srv.clone())));
            }
        }
        if s.window_start.is_none_or(|w| now - w > max_age) {
            s.window_start = Some(now);
            s.looks = 0;
        }
        s.looks += 1;
        // Before the first listing its cost is unknown: assume two pages, so that a lone
        // action keeps asking by id while a crowd of them learns the cost by listing once.
        let cost = s.latest.as_ref().map_or(2, |l| l.cost);
        if s.looks < cost {
            return Ok(Look::Ask);
        }
        // Cheaper than the looks it replaces: list, holding the lock so that looks arriving
        // meanwhile share this listing.
        let started = now;
        let servers = list().await?;
        let cost = cost_of(servers.len());
        let found = servers
            .iter()
            .find(|srv| srv.id == server_id)
            .cloned()
            .map_or(Look::Ask, Look::Listed);
        s.latest = Some(Snapshot {
            started,
            servers: listing(servers),
            cost,
        });
        s.looks = 0;
        s.window_start = Some(started);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::PowerState;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn server(id: &str) -> Server {
        Server {
            id: id.into(),
            instance_id: None,
            name: id.into(),
            state: PowerState::Running,
            ipv4: None,
            ipv6: None,
            root_password: None,
            plan: None,
        }
    }

    #[tokio::test]
    async fn a_listing_is_made_only_when_looks_outnumber_its_pages() {
        let view = View::default();
        let lists = AtomicU32::new(0);
        let list = || async {
            lists.fetch_add(1, Ordering::Relaxed);
            Ok(vec![server("1"), server("2")])
        };
        let since = Utc::now() - chrono::Duration::seconds(1);
        let age = Duration::from_secs(60);
        assert_eq!(
            view.look("1", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Ask,
            "one look is cheaper than a listing of unknown cost"
        );
        view.offer(since - chrono::Duration::seconds(5), listing(vec![]), 3)
            .await;
        assert_eq!(
            view.look("1", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Ask
        );
        assert_eq!(
            view.look("1", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Ask
        );
        assert_eq!(
            lists.load(Ordering::Relaxed),
            0,
            "two looks are cheaper than 3 pages"
        );
        assert_eq!(
            view.look("2", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Listed(server("2"))
        );
        assert_eq!(
            view.look("1", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Listed(server("1")),
            "the fresh listing answers without another request"
        );
        assert_eq!(lists.load(Ordering::Relaxed), 1);
        assert_eq!(
            view.look("9", since, Utc::now(), age, list, |_| 3)
                .await
                .unwrap(),
            Look::Ask,
            "missing from a listing is not gone: ask by id"
        );
    }

    #[tokio::test]
    async fn a_listing_older_than_the_action_is_not_used() {
        let view = View::default();
        let before = Utc::now();
        view.offer(before, listing(vec![server("1")]), 1).await;
        let since = before + chrono::Duration::milliseconds(1);
        let fresh = || async { Ok(vec![]) };
        assert_eq!(
            view.look(
                "1",
                since,
                Utc::now(),
                Duration::from_secs(60),
                fresh,
                |_| 1
            )
            .await
            .unwrap(),
            Look::Ask
        );
    }
}
