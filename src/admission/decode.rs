//! The decode of a review into k8s-openapi types, with one change to what they build: each
//! `managedFields[].fieldsV1` is kept as its JSON text, in a `Value::String`, instead of a tree.
//!
//! A FieldsV1 set names every field its manager owns, so it is as large as the object (2.8 KB
//! of the zookeeper StatefulSet's 8.4). As a `serde_json::Value` tree it cost 30% of a review's
//! instructions, built and dropped while the rules look up one path or two in the entries of
//! server-side appliers. As text, it is skipped over and copied once; `rules::explicit` walks the
//! text for the path it wants, and reads a tree the same way (objects from `check`'s manifests and
//! from the cluster keep their trees).
//!
//! The change is made by [`FieldsV1AsText`], a deserializer that forwards everything to serde_json's, wraps
//! whatever serde_json hands on (visitors, map and sequence access), and answers the one
//! newtype that k8s-openapi spells `FieldsV1` with the raw text. Everything else decodes exactly
//! as `serde_json::from_slice` would: the same values, the same errors.
use kube::core::admission::{self as kadm, AdmissionRequest, AdmissionReview};
use kube::core::{DynamicObject, GroupVersionKind, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};

use super::BadReview;
use serde_json::value::RawValue;

/// The newtype name k8s-openapi's `FieldsV1` deserializes as.
const FIELDS_V1: &str = "FieldsV1";

/// The newtype name k8s-openapi's `RawExtension` deserializes as: in a review, only
/// `request.options` (CreateOptions, UpdateOptions), which nothing reads. Kept as its text too,
/// so that nothing is lost and no tree is built for it.
const RAW_EXTENSION: &str = "RawExtension";

/// `serde_json::from_slice`, with every FieldsV1 kept as its JSON text.
///
/// A body that is UTF-8 (every review kube-apiserver sends) is checked once, whole, and decoded
/// as a `str`: serde_json then does not check each string it reads again (`from_slice` does,
/// one call per string: 6% of a StatefulSet review's instructions, 11% of a PVC's). Any other
/// body takes the slice path, so that its error is serde_json's own, with its line and column.
pub fn from_slice<T: de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => decode(serde_json::Deserializer::from_str(text)),
        Err(_) => decode(serde_json::Deserializer::from_slice(body)),
    }
}

/// An object of a review, decoded straight into its own heap allocation: kube's
/// `AdmissionRequest<Boxed<K>>` holds two pointers where `AdmissionRequest<K>` holds the object and
/// the old object inline (a StatefulSet is 2.6 KB of k8s-openapi structs, a PVC 1 KB, either one
/// inline whether it is there or not).
///
/// serde builds each value in its caller's stack frame and moves it up into the struct that holds
/// it, level by level: inline, the objects were copied from the object's visitor through
/// `Option`, the request, `Option`, the review and its `Box`, each time into a fresh frame (under
/// load, 570 of the 1,730 first-level cache lines a PVC review wrote, counted with callgrind's
/// cache simulation). Boxed, an object is moved once, into its box, and what moves above it is
/// the request's own fields.
///
/// It is the object's k8s-openapi type for kube: it has the same kind, group, version and
/// metadata, and decodes as the object does.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Boxed<K>(pub Box<K>);

impl<K> std::ops::Deref for Boxed<K> {
    type Target = K;
    fn deref(&self) -> &K {
        &self.0
    }
}

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for Boxed<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Metadata> k8s_openapi::Metadata for Boxed<K> {
    type Ty = K::Ty;
    fn metadata(&self) -> &K::Ty {
        self.0.metadata()
    }
    fn metadata_mut(&mut self) -> &mut K::Ty {
        self.0.metadata_mut()
    }
}

/// A review of a `K` as the webhook decodes it, with [`from_slice`]: the review boxed, its objects
/// [`Boxed`].
pub type Review<K> = Box<kube::core::admission::AdmissionReview<Boxed<K>>>;

fn decode<'de, R, T>(mut de: serde_json::Deserializer<R>) -> serde_json::Result<T>
where
    R: serde_json::de::Read<'de>,
    T: de::DeserializeOwned,
{
    let value = T::deserialize(FieldsV1AsText(&mut de))?;
    de.end()?;
    Ok(value)
}

/// One wrapper for every role a deserializer's parts play: the deserializer itself, the
/// visitors given to it, the map, sequence and enum access it gives back, and the seeds given to
/// those. Each wraps the next part it passes on, so the whole object is decoded through it.
struct FieldsV1AsText<T>(T);

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(FieldsV1AsText(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for FieldsV1AsText<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        if name == FIELDS_V1 || name == RAW_EXTENSION {
            let raw: Box<RawValue> = serde::Deserialize::deserialize(self.0)?;
            let text: String = Box::<str>::from(raw).into();
            return visitor.visit_newtype_struct(text.into_deserializer());
        }
        self.0
            .deserialize_newtype_struct(name, FieldsV1AsText(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_unit_struct(name, FieldsV1AsText(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, FieldsV1AsText(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, FieldsV1AsText(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, FieldsV1AsText(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, FieldsV1AsText(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FieldsV1AsText<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(FieldsV1AsText(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(FieldsV1AsText(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(FieldsV1AsText(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(FieldsV1AsText(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(FieldsV1AsText(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FieldsV1AsText<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(FieldsV1AsText(d))
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for FieldsV1AsText<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(FieldsV1AsText(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(FieldsV1AsText(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for FieldsV1AsText<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(FieldsV1AsText(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for FieldsV1AsText<A> {
    type Error = A::Error;
    type Variant = FieldsV1AsText<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(FieldsV1AsText(seed))?;
        Ok((value, FieldsV1AsText(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for FieldsV1AsText<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(FieldsV1AsText(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, FieldsV1AsText(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, FieldsV1AsText(visitor))
    }
}

/// Containers (regular, init and ephemeral) of the larger pod template of a review's object and
/// old object, counted in one pass that builds nothing; `None` when the body is not JSON of that
/// shape (the full decode then says why).
///
/// A k8s-openapi `Container` is 2,336 bytes inline whatever the JSON holds (its probes,
/// lifecycle and security context are inline `Option`s), so `{"name":"c1","image":"b"}`, 26
/// bytes, decodes into 90 times its size, and a review of a StatefulSet of 50,000 such
/// containers (1.5 MiB, which etcd accepts) into hundreds of MiB. The webhook counts first and
/// evaluates no pod with more than [`MAX_CONTAINERS`].
pub fn containers(body: &[u8]) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct Review {
        request: Option<Request>,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        object: Option<Object>,
        #[serde(rename = "oldObject")]
        old_object: Option<Object>,
    }
    #[derive(serde::Deserialize)]
    struct Object {
        spec: Option<Spec>,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        template: Option<Template>,
    }
    #[derive(serde::Deserialize)]
    struct Template {
        spec: Option<Pod>,
    }
    #[derive(serde::Deserialize)]
    struct Pod {
        containers: Option<Count>,
        #[serde(rename = "initContainers")]
        init_containers: Option<Count>,
        #[serde(rename = "ephemeralContainers")]
        ephemeral_containers: Option<Count>,
    }
    /// A list's length, its items skipped.
    struct Count(usize);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Counter;
            impl<'de> Visitor<'de> for Counter {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a list")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<de::IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Count(n))
                }
            }
            deserializer.deserialize_seq(Counter)
        }
    }
    let count = |o: Option<Object>| {
        o.and_then(|o| o.spec)
            .and_then(|s| s.template)
            .and_then(|t| t.spec)
            .map_or(0, |p| {
                [p.containers, p.init_containers, p.ephemeral_containers]
                    .into_iter()
                    .flatten()
                    .map(|c| c.0)
                    .sum()
            })
    };
    let review: Review = serde_json::from_slice(body).ok()?;
    let request = review.request?;
    Some(count(request.object).max(count(request.old_object)))
}

/// Whether a body may hold more than [`MAX_CONTAINERS`] containers in one pod template: every
/// container has a `"name"` (k8s-openapi's decode requires it), so a body with fewer such keys
/// than that has fewer containers. One SIMD scan, a microsecond for a StatefulSet review, where
/// [`containers`] parses the whole body; it only runs when this says it may.
pub fn may_hold_many_containers(body: &[u8]) -> bool {
    static NAME: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(r#""name""#));
    NAME.find_iter(body).nth(MAX_CONTAINERS).is_some()
}

/// Containers a pod template may have for the webhook to evaluate it: far beyond any real pod
/// (the kubelet runs each as a process), and small enough that decoding two such templates
/// takes about 2 MiB. A review with more is answered as uninterpretable (`--uninterpretable`).
pub const MAX_CONTAINERS: usize = 256;

/// Bodies smaller than this cannot hold more than [`MAX_CONTAINERS`] containers (each takes at
/// least 24 bytes of JSON: `{"name":"a","image":"b"},`), and are not counted first.
pub const COUNT_CONTAINERS_FROM: usize = 6 * 1024;

// ---------------------------------------------------------------------------------------------
// What kind of review a body is, before and besides the typed decode.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct Peek {
    #[serde(rename = "apiVersion", default)]
    pub(super) api_version: String,
    pub(super) request: Option<PeekRequest>,
}

#[derive(Deserialize)]
pub(super) struct PeekRequest {
    pub(super) kind: GroupVersionKind,
    #[serde(rename = "subResource", default)]
    pub(super) sub_resource: Option<String>,
}

pub(super) const STATEFULSET: (&str, &str, &str) = ("apps", "v1", "StatefulSet");
pub(super) const PVC: (&str, &str, &str) = ("", "v1", "PersistentVolumeClaim");

pub(super) fn is(gvk: &GroupVersionKind, (g, v, k): (&str, &str, &str)) -> bool {
    gvk.group == g && gvk.version == v && gvk.kind == k
}

/// The review decoded as `K`, when it is a review of one: `admission.k8s.io/v1`, with a request
/// that names `kind` on no subresource (a StatefulSet's `status` carries a StatefulSet, but is
/// not evaluated). `None` for anything else, which the careful path then sorts out.
/// Boxed: the review is kilobytes, and stays in place while the review's future is moved.
pub(super) fn decode_as<K>(body: &[u8], kind: (&str, &str, &str)) -> Option<Review<K>>
where
    Boxed<K>: Resource + DeserializeOwned,
{
    let review: Review<K> = from_slice(body).ok()?;
    let req = review.request.as_ref()?;
    let whole = req.sub_resource.as_deref().is_none_or(str::is_empty);
    (review.types.api_version == kadm::META_API_VERSION_V1 && is(&req.kind, kind) && whole)
        .then_some(review)
}

/// Whether the body names a PVC where kube-apiserver writes `request.kind`: its second key,
/// after the uid, within the first few hundred bytes. Only the order of the decodes depends on
/// it: [`decode_as`] checks the kind the request names, and a body it misleads takes the careful
/// path.
pub(super) fn names_a_pvc(body: &[u8]) -> bool {
    static PVC_KIND: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| {
            memchr::memmem::Finder::new(
                r#""kind":{"group":"","version":"v1","kind":"PersistentVolumeClaim"}"#,
            )
        });
    PVC_KIND.find(&body[..body.len().min(512)]).is_some()
}

/// The request of a review whose objects are not evaluated, without its objects: answering it
/// needs its uid and what it is about, and its objects (a StatefulSet of 50,000 containers, say)
/// would only be decoded to be dropped. A body this lean read refuses (a duplicated key) is read
/// whole, as kube reads it.
pub(super) fn generic_request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        #[serde(default)]
        kind: String,
        request: Option<HeadRequest>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct HeadRequest {
        uid: String,
        kind: GroupVersionKind,
        resource: kube::core::GroupVersionResource,
        #[serde(default)]
        sub_resource: Option<String>,
        #[serde(default)]
        request_kind: Option<GroupVersionKind>,
        #[serde(default)]
        request_resource: Option<kube::core::GroupVersionResource>,
        #[serde(default)]
        request_sub_resource: Option<String>,
        #[serde(default)]
        name: String,
        #[serde(default)]
        namespace: Option<String>,
        operation: kadm::Operation,
        user_info: k8s_openapi::api::authentication::v1::UserInfo,
        #[serde(default)]
        dry_run: bool,
    }
    let Ok(head) = serde_json::from_slice::<Head>(body) else {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
        return review.try_into().map_err(|_| BadReview::NoRequest);
    };
    let r = head.request.ok_or(BadReview::NoRequest)?;
    Ok(AdmissionRequest {
        types: kube::core::TypeMeta {
            api_version: head.api_version,
            kind: head.kind,
        },
        uid: r.uid,
        kind: r.kind,
        resource: r.resource,
        sub_resource: r.sub_resource,
        request_kind: r.request_kind,
        request_resource: r.request_resource,
        request_sub_resource: r.request_sub_resource,
        name: r.name,
        namespace: r.namespace,
        operation: r.operation,
        user_info: r.user_info,
        object: None,
        old_object: None,
        dry_run: r.dry_run,
        options: None,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn containers_are_counted_in_the_larger_template_without_decoding() {
        let review = |object: &str, old: &str| {
            format!(
                r#"{{"request":{{"uid":"u","object":{object},"oldObject":{old},"other":[1,2,{{"a":"b"}}]}}}}"#
            )
        };
        let pod = |c: usize, i: usize| {
            let list = |n: usize| format!("[{}]", vec![r#"{"name":"c","image":"i"}"#; n].join(","));
            format!(
                r#"{{"spec":{{"replicas":1,"template":{{"spec":{{"containers":{},"initContainers":{}}}}}}}}}"#,
                list(c),
                list(i)
            )
        };
        assert_eq!(
            super::containers(review(&pod(3, 1), "null").as_bytes()),
            Some(4)
        );
        assert_eq!(
            super::containers(review(&pod(1, 0), &pod(7, 2)).as_bytes()),
            Some(9)
        );
        assert_eq!(
            super::containers(review("null", "null").as_bytes()),
            Some(0)
        );
        assert_eq!(super::containers(b"not json"), None);
    }
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::core::admission::AdmissionReview;
    use serde_json::Value;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/admission-reviews/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The same review, decoded both ways: equal once each FieldsV1 text, and the options' text,
    /// is parsed back into its tree: the lean decode keeps every byte of them.
    #[test]
    fn everything_but_fields_v1_decodes_as_serde_json_decodes_it() {
        for name in [
            "statefulset-zookeeper-create.mutating.json",
            "statefulset-zookeeper-update.validating.json",
        ] {
            let body = fixture(name);
            let plain: AdmissionReview<StatefulSet> = serde_json::from_slice(&body).unwrap();
            let mut lean: AdmissionReview<StatefulSet> = from_slice(&body).unwrap();
            let req = lean.request.as_mut().unwrap();
            let mut texts = 0;
            for object in [req.object.as_mut(), req.old_object.as_mut()]
                .into_iter()
                .flatten()
            {
                for entry in object.metadata.managed_fields.iter_mut().flatten() {
                    let fields = entry.fields_v1.as_mut().unwrap();
                    let Value::String(text) = &fields.0 else {
                        panic!("{name}: fieldsV1 decoded as a tree: {:?}", fields.0);
                    };
                    fields.0 = serde_json::from_str(text).unwrap();
                    texts += 1;
                }
            }
            assert!(texts > 0, "{name} has no managedFields");
            // request.options is kept as its text: the same JSON once parsed back.
            if let Some(options) = req.options.as_mut() {
                let Value::String(text) = &options.0 else {
                    panic!("{name}: options decoded as a tree: {:?}", options.0);
                };
                options.0 = serde_json::from_str(text).unwrap();
            }
            assert_eq!(
                serde_json::to_value(&lean.request).unwrap(),
                serde_json::to_value(&plain.request).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn errors_are_serde_jsons_errors() {
        let body = fixture("statefulset-zookeeper-create.mutating.json");
        let text = String::from_utf8(body).unwrap();
        for broken in [
            text.replacen(r#""replicas":3"#, r#""replicas":"three""#, 1),
            text.replacen(r#""fieldsV1":{"#, r#""fieldsV1":{,"#, 1),
            text[..text.len() / 2].to_owned(),
            format!("{text} trailing"),
        ] {
            let plain = serde_json::from_slice::<AdmissionReview<StatefulSet>>(broken.as_bytes())
                .unwrap_err();
            let lean = from_slice::<AdmissionReview<StatefulSet>>(broken.as_bytes()).unwrap_err();
            assert_eq!(lean.to_string(), plain.to_string());
        }
        // Not UTF-8: the lead byte of a two-byte character with no continuation, inside a
        // string (before the `z` of "zookeeper"), and a byte that is never UTF-8, outside one.
        // The error is `from_slice`'s, which says where.
        let name = text.find(r#""zookeeper""#).unwrap() + 1;
        for (at, byte) in [(name, 0xc3), (text.len() - 1, 0xff)] {
            let mut broken = text.clone().into_bytes();
            broken.insert(at, byte);
            let plain =
                serde_json::from_slice::<AdmissionReview<StatefulSet>>(&broken).unwrap_err();
            let lean = from_slice::<AdmissionReview<StatefulSet>>(&broken).unwrap_err();
            assert_eq!(lean.to_string(), plain.to_string());
            assert!(lean.line() > 0 && lean.column() > 0, "{lean}");
        }
    }
}
