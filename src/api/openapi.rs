//! The API's OpenAPI 3 document, kept beside the routes it describes.

use serde_json::{Value, json};

use super::lifecycle::{DEFAULT_PAGE, MAX_PAGE};
use super::{MAX_DEPTH_LIMIT, MAX_NODES_LIMIT, MAX_SEEDS};

/// The OpenAPI 3 description of the API, served at `/openapi.json`. With `secured` (the
/// server requires tokens) it declares the bearer scheme on the crawl routes, with their
/// 401 and 403 answers; an open server does not claim a security it does not enforce.
pub fn document(secured: bool) -> Value {
    let error = json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "seed": {"type": "string"},
            "limit": {"type": "string", "description": "The operator's ceiling that refused the request: API_MAX_DEPTH_LIMIT, API_MAX_NODES_LIMIT, API_MAX_RUNNING_CRAWLS or API_CRAWLS_PER_MINUTE."},
            "request_id": {"type": "string", "description": "Quote it when reporting a 5xx: the log has the cause under this id."}
        }
    });
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let status_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CrawlStatus"}}}});
    let id_parameter =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let counts =
        json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}});
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Relentless Bookworm API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Create, list, watch, pause, resume, cancel and delete crawls of the Open Library graph."
        },
        "paths": {
            "/crawls": {
                "get": {
                    "operationId": "listCrawls",
                    "summary": "A page of crawls, newest first",
                    "parameters": [
                        {"name": "state", "in": "query", "required": false, "schema": {"type": "string", "enum": ["running", "paused", "blocked", "done", "cancelled"]}},
                        {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
                        {"name": "after", "in": "query", "required": false, "description": "The `next` of the previous page (opaque).", "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "A page of crawls; `next` is null on the last page. A filtered page may be short (even empty) with a `next`: the server reads a bounded number of crawls per page.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CrawlPage"}}}},
                        "400": error_response("A query parameter is unknown or invalid."),
                        "503": error_response("Redis is unavailable.")
                    }
                },
                "post": {
                    "operationId": "createCrawl",
                    "summary": "Start a crawl from up to 100 seeds",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateCrawl"}}}},
                    "responses": {
                        "201": status_response("The crawl was created and its seeds enqueued."),
                        "400": error_response("The body or a seed is invalid; nothing was enqueued."),
                        "413": {"description": "The body is larger than 64 KiB."},
                        "422": error_response("max_depth or max_nodes is above the operator's ceiling (`limit` names it)."),
                        "429": {"description": "Too many crawls running (API_MAX_RUNNING_CRAWLS) or created by this caller in the last minute (API_CRAWLS_PER_MINUTE, with Retry-After).", "headers": {"Retry-After": {"schema": {"type": "integer"}}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                        "503": error_response("Redis or Kafka is unavailable; nothing was enqueued.")
                    }
                }
            },
            "/crawls/{id}": {
                "parameters": id_parameter,
                "get": {
                    "operationId": "getCrawl",
                    "summary": "A crawl's state and counters",
                    "responses": {
                        "200": status_response("The crawl's status."),
                        "404": error_response("No crawl has this id."),
                        "503": error_response("Redis is unavailable.")
                    }
                },
                "delete": {
                    "operationId": "cancelCrawl",
                    "summary": "Cancel a crawl: workers drop its remaining jobs; with purge=true, delete a finished crawl's state",
                    "parameters": [
                        {"name": "purge", "in": "query", "required": false, "description": "Delete the state (summary included) of a done or cancelled crawl at once.", "schema": {"type": "boolean", "default": false}},
                        {"name": "force", "in": "query", "required": false, "description": "With purge: cancel a crawl with work ahead first.", "schema": {"type": "boolean", "default": false}}
                    ],
                    "responses": {
                        "200": {"description": "The crawl's status after cancelling, or `{\"crawl_id\", \"deleted\": true}` after a purge.", "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/CrawlStatus"}, {"$ref": "#/components/schemas/Deleted"}]}}}},
                        "400": error_response("A query parameter is unknown or invalid."),
                        "404": error_response("No crawl has this id."),
                        "409": error_response("purge=true on a crawl with work ahead, without force=true."),
                        "503": error_response("Redis is unavailable.")
                    }
                }
            },
            "/crawls/{id}/pause": {
                "parameters": id_parameter,
                "post": {
                    "operationId": "pauseCrawl",
                    "summary": "Pause a crawl: workers hold its jobs without fetching them",
                    "responses": {
                        "200": status_response("The crawl's status, paused."),
                        "404": error_response("No crawl has this id."),
                        "409": error_response("The crawl is done or cancelled."),
                        "503": error_response("Redis is unavailable.")
                    }
                }
            },
            "/crawls/{id}/resume": {
                "parameters": id_parameter,
                "post": {
                    "operationId": "resumeCrawl",
                    "summary": "Resume a paused crawl where it stopped (repeat it if it answered 503)",
                    "responses": {
                        "200": status_response("The crawl's status, running (or done if nothing was left)."),
                        "404": error_response("No crawl has this id."),
                        "409": error_response("The crawl is cancelled."),
                        "503": error_response("Redis or Kafka is unavailable; resume again.")
                    }
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "summary": "Process liveness", "responses": {"200": {"description": "Alive."}, "503": {"description": "Wedged."}}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "Dependencies reachable", "responses": {"200": {"description": "Ready."}, "503": {"description": "A dependency is down."}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
        },
        "components": {
            "schemas": {
                "Error": error,
                "CreateCrawl": {
                    "type": "object",
                    "required": ["seeds"],
                    "additionalProperties": false,
                    "properties": {
                        "seeds": {
                            "type": "array", "minItems": 1, "maxItems": MAX_SEEDS,
                            "items": {"type": "string", "description": "An Open Library work, author or edition key or URL, or free text of 3 to 200 characters."}
                        },
                        // null means the server's default, as leaving the field out does.
                        "max_depth": {"type": "integer", "nullable": true, "minimum": 0, "maximum": MAX_DEPTH_LIMIT},
                        "max_nodes": {"type": "integer", "nullable": true, "minimum": 1, "maximum": MAX_NODES_LIMIT}
                    }
                },
                "CrawlPage": {
                    "type": "object",
                    "required": ["crawls", "next"],
                    "properties": {
                        "crawls": {"type": "array", "items": {"$ref": "#/components/schemas/CrawlStatus"}},
                        "next": {"type": "string", "nullable": true}
                    }
                },
                "Deleted": {
                    "type": "object",
                    "required": ["crawl_id", "deleted"],
                    "properties": {"crawl_id": {"type": "string"}, "deleted": {"type": "boolean"}}
                },
                "CrawlStatus": {
                    "type": "object",
                    "required": ["crawl_id", "state", "seeds", "max_depth", "max_nodes", "counters", "created_at", "updated_at"],
                    "properties": {
                        "crawl_id": {"type": "string"},
                        "state": {"type": "string", "enum": ["running", "paused", "blocked", "done", "cancelled"]},
                        "seeds": {"type": "array", "items": {"type": "string"}},
                        "max_depth": {"type": "integer", "minimum": 0},
                        "max_nodes": {"type": "integer", "minimum": 1},
                        "counters": {
                            "type": "object",
                            "required": ["enqueued", "fetched", "in_flight", "duplicates", "nodes", "edges", "failed"],
                            "properties": {
                                "enqueued": {"type": "integer", "minimum": 0},
                                "fetched": {"type": "integer", "minimum": 0},
                                "in_flight": {"type": "integer", "minimum": 0},
                                "duplicates": {"type": "integer", "minimum": 0},
                                "skipped": {"type": "integer", "minimum": 0},
                                "nodes": counts,
                                "edges": {"type": "integer", "minimum": 0},
                                "edges_estimated": {"type": "boolean"},
                                "failed": counts
                            }
                        },
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"}
                    }
                }
            }
        }
    });
    let timeouts = [
        ("408", "The request took longer than API_REQUEST_TIMEOUT."),
        ("413", "The body is larger than 64 KiB."),
    ];
    for (path, methods) in [
        ("/crawls", &["get", "post"][..]),
        ("/crawls/{id}", &["get", "delete"][..]),
        ("/crawls/{id}/pause", &["post"][..]),
        ("/crawls/{id}/resume", &["post"][..]),
    ] {
        for method in methods {
            let operation = &mut document["paths"][path][method];
            for (status, description) in timeouts {
                if operation["responses"][status].is_null() {
                    operation["responses"][status] = json!({"description": description});
                }
            }
            if secured {
                operation["security"] = json!([{"bearerAuth": []}]);
                operation["responses"]["401"] =
                    error_response("No valid bearer token (Authorization: Bearer <token>).");
                operation["responses"]["403"] =
                    error_response("The token may only read (role `read`).");
            }
        }
    }
    if secured {
        document["components"]["securitySchemes"] = json!({
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of API_TOKENS_FILE: role `read` for GET routes, `write` for everything."
            }
        });
    }
    document
}
