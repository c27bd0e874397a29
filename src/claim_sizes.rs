//! The sizes `volume-growth` records on a StatefulSet (`stateful-guard.io/claim-sizes:
//! data=2Gi`), and the storage quantities they compare: the vocabulary the rule
//! (`rules::volume_growth`), the cluster cache (which keeps each StatefulSet's recorded sizes)
//! and the grower (`grow`) share, kept below all three.
use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The sizes recorded on a StatefulSet: `template=size,template=size`.
pub const SIZES_ANNOTATION: &str = "stateful-guard.io/claim-sizes";

/// A Kubernetes quantity in bytes (`2Gi`, `500Mi`, `1.5G`, `1e9`); `None` when it is not one.
pub fn bytes(quantity: &str) -> Option<u128> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        exponent => {
            let e: u32 = exponent
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse().ok())?;
            10u128.checked_pow(e)?
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        let scale = 10u128.checked_pow(fraction.len() as u32)?;
        value = value.checked_add(digits.checked_mul(multiplier)? / scale)?;
    }
    Some(value)
}

/// The sizes recorded on an object, by template.
pub fn recorded_sizes(meta: &ObjectMeta) -> Vec<(String, String)> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(SIZES_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter_map(|entry| entry.split_once('='))
                .map(|(t, s)| (t.trim().to_owned(), s.trim().to_owned()))
                .filter(|(t, s)| !t.is_empty() && bytes(s).is_some())
                .collect()
        })
        .unwrap_or_default()
}

/// The storage a claim (or claim template) requests.
pub fn storage(spec: Option<&PersistentVolumeClaimSpec>) -> Option<&str> {
    spec?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("500Mi"), Some(500 << 20));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("2G"), Some(2_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("10"), Some(10));
        assert_eq!(bytes("Gi"), None);
        assert_eq!(bytes("1Xi"), None);
    }
}
