//! `#[derive(Event)]` and `#[derive(Features)]`: a plugin's input schema and its
//! features are read from its Rust types, so they are written once. Re-exported by
//! `lockstep-sdk`, whose `schema` module holds the traits they implement; see its docs.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, LitStr, parse_macro_input};

/// Derives `lockstep_sdk::schema::EventSchema`: one input field per struct field, by
/// name, typed by the field's Rust type (`Option<T>`: nullable). Mark the entity key
/// `#[event(key)]`, the event time `#[event(time)]` and, if any, the event id
/// `#[event(id)]`; a field's description is `#[event(doc = "…")]` or its doc comment.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_event(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `lockstep_sdk::schema::FeatureSchema`: one feature per struct field, in
/// order, typed by the field's Rust type. `#[feat(default = EXPR)]` is the value
/// served when serving degrades (a value of the field's type; null when absent);
/// `#[feat(doc = "…")]` or the doc comment describes it. (`feat`, because `feature`
/// is a built-in attribute of Rust.)
#[proc_macro_derive(Features, attributes(feat))]
pub fn derive_features(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_features(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A struct's named fields, or an error pointing at what is not one.
fn named_fields(input: &DeriveInput) -> syn::Result<&syn::FieldsNamed> {
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => Ok(fields),
            other => Err(syn::Error::new(
                other.span(),
                "a Lockstep schema is a struct with named fields",
            )),
        },
        _ => Err(syn::Error::new(
            input.ident.span(),
            "a Lockstep schema is a struct with named fields",
        )),
    }
}

/// The field's doc comment, lines joined by spaces.
fn doc_comment(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if attr.path().is_ident("doc")
            && let syn::Meta::NameValue(nv) = &attr.meta
            && let Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) = &nv.value
        {
            lines.push(text.value().trim().to_owned());
        }
    }
    lines.join(" ").trim().to_owned()
}

/// The name a field is decoded by: serde's `rename`, if any, else its identifier.
fn wire_name(field: &syn::Field) -> syn::Result<String> {
    let mut name = None;
    for attr in &field.attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") && meta.input.peek(syn::Token![=]) {
                    let value: LitStr = meta.value()?.parse()?;
                    name = Some(value.value());
                } else if meta.path.is_ident("rename") {
                    // `rename(deserialize = "…", serialize = "…")`: events are read.
                    meta.parse_nested_meta(|inner| {
                        let value: LitStr = inner.value()?.parse()?;
                        if inner.path.is_ident("deserialize") {
                            name = Some(value.value());
                        }
                        Ok(())
                    })?;
                } else if meta.input.peek(syn::Token![=]) {
                    // Another serde setting with a value: not ours to read.
                    let _: Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    // Another serde setting with a list: not ours either.
                    meta.parse_nested_meta(|inner| {
                        if inner.input.peek(syn::Token![=]) {
                            let _: Expr = inner.value()?.parse()?;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
    }
    match name {
        Some(name) => Ok(name),
        None => field
            .ident
            .as_ref()
            .map(|ident| ident.to_string().trim_start_matches("r#").to_owned())
            .ok_or_else(|| syn::Error::new(field.span(), "a schema field needs a name")),
    }
}

fn expand_event(input: &DeriveInput) -> syn::Result<Tokens> {
    let fields = named_fields(input)?;
    let mut entries = Vec::new();
    let (mut key, mut time, mut id) = (None, None, None);
    for field in &fields.named {
        let name = wire_name(field)?;
        let ty = &field.ty;
        let mut doc = doc_comment(&field.attrs);
        for attr in &field.attrs {
            if !attr.path().is_ident("event") {
                continue;
            }
            attr.parse_nested_meta(|meta| {
                let mark = |slot: &mut Option<String>, what: &str| {
                    if slot.is_some() {
                        return Err(meta.error(format!("two fields are marked as the {what}")));
                    }
                    *slot = Some(name.clone());
                    Ok(())
                };
                if meta.path.is_ident("key") {
                    mark(&mut key, "entity key")
                } else if meta.path.is_ident("time") {
                    mark(&mut time, "event time")
                } else if meta.path.is_ident("id") {
                    mark(&mut id, "event id")
                } else if meta.path.is_ident("doc") {
                    let text: LitStr = meta.value()?.parse()?;
                    doc = text.value();
                    Ok(())
                } else {
                    Err(meta.error("expected `key`, `time`, `id` or `doc = \"…\"`"))
                }
            })?;
        }
        entries.push(quote! {
            ::lockstep_sdk::Field {
                name: #name.into(),
                ty: <#ty as ::lockstep_sdk::schema::FieldType>::TYPE,
                nullable: <#ty as ::lockstep_sdk::schema::FieldType>::NULLABLE,
                description: #doc.into(),
            }
        });
    }
    let missing = |what: &str, mark: &str| {
        syn::Error::new(
            input.ident.span(),
            format!("mark the {what} field with `#[event({mark})]`"),
        )
    };
    let key = key.ok_or_else(|| missing("entity key", "key"))?;
    let time = time.ok_or_else(|| missing("event time", "time"))?;
    let id = match id {
        Some(id) => quote! { ::core::option::Option::Some(#id) },
        None => quote! { ::core::option::Option::None },
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::lockstep_sdk::schema::EventSchema for #ident #ty_generics #where_clause {
            fn fields() -> ::std::vec::Vec<::lockstep_sdk::Field> {
                ::std::vec![#(#entries),*]
            }
            fn entity_key() -> &'static str {
                #key
            }
            fn event_time() -> &'static str {
                #time
            }
            fn event_id() -> ::core::option::Option<&'static str> {
                #id
            }
        }
    })
}

fn expand_features(input: &DeriveInput) -> syn::Result<Tokens> {
    let fields = named_fields(input)?;
    let mut entries = Vec::new();
    for field in &fields.named {
        let name = wire_name(field)?;
        let ty = &field.ty;
        let mut doc = doc_comment(&field.attrs);
        let mut default = None;
        for attr in &field.attrs {
            if !attr.path().is_ident("feat") {
                continue;
            }
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("default") {
                    let value: Expr = meta.value()?.parse()?;
                    default = Some(value);
                    Ok(())
                } else if meta.path.is_ident("doc") {
                    let text: LitStr = meta.value()?.parse()?;
                    doc = text.value();
                    Ok(())
                } else {
                    Err(meta.error("expected `default = …` or `doc = \"…\"`"))
                }
            })?;
        }
        let default = match default {
            Some(value) => quote! {
                <#ty as ::lockstep_sdk::schema::FieldType>::value(#value)
            },
            None => quote! { ::lockstep_sdk::Value::Null },
        };
        entries.push(quote! {
            ::lockstep_sdk::Feature {
                name: #name.into(),
                ty: <#ty as ::lockstep_sdk::schema::FieldType>::TYPE,
                description: #doc.into(),
                default_value: #default,
            }
        });
    }
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::lockstep_sdk::schema::FeatureSchema for #ident #ty_generics #where_clause {
            fn features() -> ::std::vec::Vec<::lockstep_sdk::Feature> {
                ::std::vec![#(#entries),*]
            }
        }
    })
}
