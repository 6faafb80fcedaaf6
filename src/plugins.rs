//! The registry of built-in plugins. Third-party plugins are registered the same way by a binary
//! that embeds tollgate: `builtin_registry()` then `register::<TheirPlugin>()`.

use tollgate_plugin_api::PluginRegistry;

/// A registry holding every built-in plugin.
pub fn builtin_registry() -> PluginRegistry {
    let mut r = PluginRegistry::new();
    r.register::<tollgate_request_id::RequestIdPlugin>()
        .register::<tollgate_headers::HeadersPlugin>()
        .register::<tollgate_cors::CorsPlugin>()
        .register::<tollgate_ip_restriction::IpRestrictionPlugin>()
        .register::<tollgate_body_limit::BodyLimitPlugin>()
        .register::<tollgate_jwt_auth::JwtAuthPlugin>()
        .register::<tollgate_key_auth::KeyAuthPlugin>()
        .register::<tollgate_rate_limit::RateLimitPlugin>();
    r
}
