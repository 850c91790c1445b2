//! `redis.url` names one of three topologies, each with a URL of its own scheme:
//!
//! | topology | URL |
//! |---|---|
//! | one Redis (a managed endpoint that fails over by itself, too) | `redis://[[user]:password@]host:6379/db`, `rediss://…` (TLS), `unix://…` |
//! | Sentinel: a primary with replicas, followed through the sentinels | `redis+sentinel://[[user]:password@]sentinel1:26379,sentinel2:26379/master-name[/db]`, `rediss+sentinel://…` (TLS to the sentinels and to Redis) |
//! | Redis Cluster | `redis+cluster://[[user]:password@]node1:6379,node2:6379`, `rediss+cluster://…` |
//!
//! The user and password are Redis's (the sentinels are asked without them). Pure: parsing only.

/// What `redis.url` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One Redis at this URL.
    Single { url: String },
    /// The primary that the sentinels (`redis://host:port/` each) name `master`, reached with
    /// the URL's database, credentials and TLS.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
    /// A cluster reached through these seed nodes (`redis://[user:password@]host:port/` each).
    Cluster { nodes: Vec<String> },
}

impl RedisTopology {
    /// Parses `redis.url`; the error says what is wrong and what the form is.
    pub fn parse(url: &str) -> Result<RedisTopology, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(RedisTopology::Single { url: url.into() });
        };
        let (tls, kind) = match scheme {
            "redis+sentinel" => (false, Kind::Sentinel),
            "rediss+sentinel" => (true, Kind::Sentinel),
            "redis+cluster" => (false, Kind::Cluster),
            "rediss+cluster" => (true, Kind::Cluster),
            _ => return Ok(RedisTopology::Single { url: url.into() }),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, authority),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (nonempty(u), nonempty(p)),
                None => (nonempty(a), None),
            },
        };
        let addrs = hosts
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let plain = if tls { "rediss" } else { "redis" };
        match kind {
            Kind::Sentinel => {
                let mut parts = path.split('/').filter(|p| !p.is_empty());
                let master = parts.next().ok_or(
                    "names no master: the form is \
                     redis+sentinel://[:password@]sentinel1:26379,sentinel2:26379/master-name[/db]",
                )?;
                let db = match parts.next() {
                    None => 0,
                    Some(d) => d
                        .parse::<i64>()
                        .map_err(|_| format!("has database {d:?}, which is not a number"))?,
                };
                Ok(RedisTopology::Sentinel {
                    master: master.into(),
                    sentinels: addrs
                        .iter()
                        .map(|(h, p)| format!("{plain}://{h}:{p}/"))
                        .collect(),
                    db,
                    username: username.map(String::from),
                    password: password.map(String::from),
                    tls,
                })
            }
            Kind::Cluster => {
                if !path.trim_matches('/').is_empty() {
                    return Err("has a path; a cluster has one database, 0: the form is \
                                redis+cluster://[:password@]node1:6379,node2:6379"
                        .into());
                }
                let auth = match (username, password) {
                    (None, None) => String::new(),
                    (u, p) => format!("{}:{}@", u.unwrap_or(""), p.unwrap_or("")),
                };
                Ok(RedisTopology::Cluster {
                    nodes: addrs
                        .iter()
                        .map(|(h, p)| format!("{plain}://{auth}{h}:{p}/"))
                        .collect(),
                })
            }
        }
    }

    /// Whether the connections to Redis use TLS.
    pub fn tls(&self) -> bool {
        match self {
            RedisTopology::Single { url } => {
                url.starts_with("rediss:") || url.starts_with("valkeys:")
            }
            RedisTopology::Sentinel { tls, .. } => *tls,
            RedisTopology::Cluster { nodes } => nodes.iter().all(|n| n.starts_with("rediss:")),
        }
    }
}

enum Kind {
    Sentinel,
    Cluster,
}

fn nonempty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

fn host_port(hp: &str) -> Result<(String, u16), String> {
    let (h, p) = hp.rsplit_once(':').ok_or_else(|| {
        format!(
            "has the address {hp:?} without a port: list each as host:port, separated by commas"
        )
    })?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("has the address {hp:?}, whose port is not a port number"))?;
    if h.is_empty() {
        return Err(format!("has the address {hp:?} without a host"));
    }
    Ok((h.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_master_the_sentinels_the_database_and_redis_credentials() {
        let t = RedisTopology::parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2").unwrap();
        assert_eq!(
            t,
            RedisTopology::Sentinel {
                master: "mymaster".into(),
                sentinels: vec!["redis://s1:26379/".into(), "redis://s2:26380/".into()],
                db: 2,
                username: None,
                password: Some("pw".into()),
                tls: false,
            }
        );
        assert!(
            RedisTopology::parse("rediss+sentinel://s1:26379/m")
                .unwrap()
                .tls()
        );
        assert!(RedisTopology::parse("redis+sentinel://s1:26379/").is_err());
        assert!(RedisTopology::parse("redis+sentinel://s1/m").is_err());
    }

    #[test]
    fn a_cluster_url_lists_its_seed_nodes_each_with_the_credentials() {
        let t = RedisTopology::parse("rediss+cluster://u:pw@n1:7000,n2:7001").unwrap();
        assert_eq!(
            t,
            RedisTopology::Cluster {
                nodes: vec![
                    "rediss://u:pw@n1:7000/".into(),
                    "rediss://u:pw@n2:7001/".into()
                ],
            }
        );
        assert!(t.tls());
        assert!(RedisTopology::parse("redis+cluster://n1:7000/3").is_err());
    }

    #[test]
    fn any_other_url_is_one_redis() {
        for u in [
            "redis://127.0.0.1:6379/0",
            "rediss://h:6380/",
            "unix:///tmp/r.sock",
        ] {
            assert_eq!(
                RedisTopology::parse(u).unwrap(),
                RedisTopology::Single { url: u.into() }
            );
        }
    }
}
