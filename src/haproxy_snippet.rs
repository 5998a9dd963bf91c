//! The HAProxy configuration snippet printed by `haproxy-config`, matching the current settings.

use crate::config::{Config, RuntimeApiAddr};

/// The frontend/backend lines a user adds to their haproxy.cfg.
pub fn snippet(c: &Config) -> String {
    let responder = if c.responder_listen.ip().is_unspecified() {
        format!(
            "127.0.0.1:{}    # the address at which HAProxy reaches haproxy-acme (RESPONDER_LISTEN {})",
            c.responder_listen.port(),
            c.responder_listen
        )
    } else {
        c.responder_listen.to_string()
    };
    let socket = match &c.haproxy_runtime_api {
        Some(RuntimeApiAddr::Unix(p)) => format!("    stats socket {} mode 600 level admin\n", p.display()),
        Some(RuntimeApiAddr::Tcp(a)) => {
            let port = a.rsplit(':').next().unwrap_or("9999");
            format!("    stats socket ipv4@0.0.0.0:{port} level admin    # reachable only by haproxy-acme\n")
        }
        None => "    # HAPROXY_RUNTIME_API is unset: files-only mode, HAProxy must be reloaded to see new files\n".into(),
    };
    let certs = c.haproxy_certs_dir.display().to_string();
    format!(
        "# haproxy-acme: add to haproxy.cfg (deploy/haproxy.cfg is a complete example)\n\
         global\n{socket}\n\
         frontend fe_http\n\
         \x20   bind :80\n\
         \x20   acl is_acme path_beg /.well-known/acme-challenge/\n\
         \x20   http-request redirect scheme https code 301 unless is_acme\n\
         \x20   use_backend be_acme if is_acme\n\n\
         frontend fe_https\n\
         \x20   bind :443 ssl crt {certs}/\n\n\
         backend be_acme\n\
         \x20   server acme {responder}\n",
        certs = certs.trim_end_matches('/'),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RawSettings;
    use crate::config::Need;

    #[test]
    fn snippet_follows_the_settings() {
        let raw = RawSettings {
            domains: Some("a.com".into()),
            certs_dir: Some("/data/certs".into()),
            haproxy_certs_dir: Some("/usr/local/etc/haproxy/certs/".into()),
            haproxy_runtime_api: Some("unix:/run/haproxy/admin.sock".into()),
            responder_listen: Some("0.0.0.0:8402".into()),
            ..Default::default()
        };
        let s = snippet(&Config::from_raw(&raw, Need::Daemon).unwrap().0);
        assert!(
            s.contains("bind :443 ssl crt /usr/local/etc/haproxy/certs/\n"),
            "{s}"
        );
        assert!(s.contains("stats socket /run/haproxy/admin.sock mode 600 level admin"));
        assert!(s.contains("server acme 127.0.0.1:8402"));
        assert!(s.contains("use_backend be_acme if is_acme"));
    }
}
