//! The shape of what an operator types: cyzen ids, a tenant ID, a client ID, a mailbox address.
//! Checked before anything is stored or sent to Microsoft.

use super::service::AdminError;

/// An id as the event contract allows (`A-Z a-z 0-9 . _ : -`, 1..=64).
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<(), AdminError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AdminError::invalid(
            if what == "user" {
                "invalid_user_id"
            } else {
                "invalid_company_id"
            },
            format!("{what} id {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A tenant ID as Microsoft's endpoints take it: the directory (tenant) GUID, or a DNS domain
/// name of the tenant (`contoso.onmicrosoft.com`). Anything else (`..`, `.`, `common`, a path)
/// is refused, naming the field: it would vanish from, or change, the token and consent URLs.
pub(super) fn check_tenant(t: &str) -> Result<(), AdminError> {
    let t = t.trim();
    if is_guid(t) || is_dns_domain(t) {
        Ok(())
    } else {
        Err(AdminError::invalid(
            "invalid_tenant_id",
            format!(
                "tenant_id {t:?} must be the directory (tenant) ID, a GUID such as \
                 72f988bf-86f1-41af-91ab-2d7cd011db47, or the tenant's domain name such as \
                 contoso.onmicrosoft.com"
            ),
        ))
    }
}

/// A GUID in its usual form, `8-4-4-4-12` hex digits.
pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// A DNS domain name: at least two labels of 1 to 63 letters, digits and inner hyphens, at most
/// 253 characters, and a top-level label that is not all digits (so not an IP address).
pub(crate) fn is_dns_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

pub(super) fn check_client_id(c: &str) -> Result<(), AdminError> {
    let c = c.trim();
    let ok = !c.is_empty()
        && c.len() <= 100
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AdminError::invalid(
            "invalid_client_id",
            "client_id must be the application (client) ID, a GUID",
        ))
    }
}

/// Why an address cannot be linked: `malformed_address`, or `non_ascii_address` (Graph names a
/// mailbox by its user principal name, which Microsoft Entra limits to ASCII; a full-width
/// `ｔａｒｏ` typed in Japan is not `taro`, and two spellings must never become two mailboxes).
pub fn address_problem(a: &str) -> Option<&'static str> {
    if !is_well_formed_address(a) {
        Some("malformed_address")
    } else if !a.is_ascii() {
        Some("non_ascii_address")
    } else {
        None
    }
}

/// A plausible mailbox address: `local@domain.tld`, no spaces or separators, ≤ 254 characters.
pub fn is_well_formed_address(a: &str) -> bool {
    if a.len() > 254 || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if a.contains([',', ';', '<', '>', '"', '/', '\\', ':', '(', ')', '[', ']']) {
        return false;
    }
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_for_shape_only() {
        for ok in [
            "taro@acme.onmicrosoft.com",
            "o'neil@x.co.jp",
            "a_b.c#EXT#@t.onmicrosoft.com",
            "Taro.Yamada+cal@Example.COM",
        ] {
            assert!(is_well_formed_address(ok), "{ok}");
        }
        for bad in [
            "",
            "taro",
            "taro@",
            "@acme.com",
            "taro@acme",
            "taro@@acme.com",
            "taro @acme.com",
            "taro@acme..com",
            "taro@acme.com.",
            "a,b@acme.com",
            "taro@acme.com/x",
        ] {
            assert!(!is_well_formed_address(bad), "{bad}");
        }
    }

    #[test]
    fn an_address_outside_ascii_is_refused_with_its_own_reason() {
        assert_eq!(address_problem("taro@acme.com"), None);
        assert_eq!(
            address_problem("ｔａｒｏ@acme.com"),
            Some("non_ascii_address")
        );
        assert_eq!(address_problem("tarö@acme.com"), Some("non_ascii_address"));
        assert_eq!(address_problem("taro＠acme.com"), Some("malformed_address"));
    }

    #[test]
    fn a_tenant_id_is_a_guid_or_a_domain_name_and_nothing_else() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "Acme.co.jp",
            "xn--eckwd4c7c.jp",
        ] {
            assert!(check_tenant(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "common",
            "organizations",
            "a..b.com",
            ".acme.com",
            "acme.com.",
            "-acme.com",
            "acme-.com",
            "10.0.0.1",
            "acme.com/x",
            "acme.com?x=1",
            "72f988bf86f141af91ab2d7cd011db47",
            "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
        ] {
            match check_tenant(bad) {
                Err(AdminError::Invalid { code, message }) => {
                    assert_eq!(code, "invalid_tenant_id", "{bad}");
                    assert!(message.starts_with("tenant_id "), "{message}");
                }
                other => panic!("{bad:?} was accepted: {other:?}"),
            }
        }
    }
}
