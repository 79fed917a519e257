/*
 * virtufin_worker_api_c.h - the C ABI of native workmanager workers (ABI version 1).
 *
 * A native worker is a shared library (lib<name>.so) exporting two functions:
 *
 *   int32_t Process(const VirtufinHost* host, const uint8_t* in_buf, int32_t in_len,
 *                   uint8_t** out_buf, int32_t* out_len);
 *   void    FreeResult(uint8_t* result);
 *
 * `in_buf` holds a CloudEvent FlatBuffer (schemas/worker_api.fbs, root table, no size prefix, no
 * file identifier). On success Process sets `*out_buf` to a malloc'd WorkerResponse FlatBuffer and
 * returns 0; the host calls FreeResult exactly once for every non-NULL `*out_buf`, also when
 * Process returned non-zero. See docs/native-workers.md for the full guide.
 *
 * Besides the ABI this header carries helpers that need nothing but libc (all `static inline`,
 * so including the header in several translation units is fine):
 *
 *   - a bounds-checked reader for the input CloudEvent: virtufin_event_open() and the
 *     virtufin_event_*() accessors;
 *   - malloc-based builders for the reply: build_minimal_worker_response(),
 *     virtufin_build_worker_response(), virtufin_build_error_response(), and
 *     virtufin_build_cloud_event();
 *   - virtufin_log() / virtufin_logf() / virtufin_gateway_call() wrappers around the host
 *     callbacks.
 *
 * Every helper is reentrant (no global state), so concurrent Process calls may use them.
 *
 * Reader rules (every accessor follows them, so a truncated or hostile buffer gives an error
 * code, never an out-of-bounds read):
 *   - every offset, vtable, table, string and vector is checked to lie inside [buf, buf+len),
 *     with 64-bit arithmetic so that no sum can wrap;
 *   - alignment is checked relative to the start of the buffer as the FlatBuffers verifiers do
 *     (4 for offsets, tables, strings and vectors, 2 for vtables), but the buffer itself may sit
 *     at any address: all loads are byte-wise little-endian;
 *   - vtables must be at least 4 bytes and of even size; an offset field must lie inside its
 *     table's declared size;
 *   - strings must end with a NUL inside the buffer and be valid UTF-8 (as the Rust side insists);
 *     a string may contain NUL bytes before its end: use the returned length;
 *   - virtufin_event_open() visits the whole event once and refuses it when the bytes it would
 *     visit exceed VIRTUFIN_FB_MAX_VISIT_FACTOR times the buffer length (tables shared many times);
 *     there is no recursion and every loop is bounded by a vector length already checked against
 *     the buffer length.
 *   - pointers returned by accessors point into the caller's buffer: they are valid while it is.
 *
 * Return codes of the reader: VIRTUFIN_FB_OK (0), VIRTUFIN_FB_ABSENT (1, the optional field or
 * extension is not there), or one of the negative VIRTUFIN_FB_ERR_* codes below.
 *
 * Builders return a malloc'd buffer (release it with free(), which is what the usual FreeResult
 * does) and set *out_len; on an invalid argument or a failed malloc they return NULL and set
 * *out_len to 0. Invalid arguments: a NULL required string, a string that is not valid UTF-8, a
 * negative length, data == NULL with data_len > 0, an extension with a NULL name or value, or a
 * result larger than INT32_MAX bytes.
 *
 * Compiles cleanly as C11 and C++ (gcc/g++ -Wall -Wextra -Werror -pedantic).
 */
#ifndef VIRTUFIN_WORKER_API_C_H
#define VIRTUFIN_WORKER_API_C_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * The ABI
 * ------------------------------------------------------------------------------------------- */

/** The ABI version this header describes; the host passes it in VirtufinHost.abi_version. */
#define VIRTUFIN_ABI_VERSION 1

/** Log levels of VirtufinHost.log (mapped to the host's trace..error). */
#define VIRTUFIN_LOG_TRACE 0
#define VIRTUFIN_LOG_DEBUG 1
#define VIRTUFIN_LOG_INFO 2
#define VIRTUFIN_LOG_WARN 3
#define VIRTUFIN_LOG_ERROR 4

/** Marks Process/FreeResult as exported even when the library is built with
 *  -fvisibility=hidden. The prototypes below carry it, so a definition without it is exported
 *  too. */
#if defined(_WIN32) || defined(__CYGWIN__)
#define VIRTUFIN_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define VIRTUFIN_EXPORT __attribute__((visibility("default")))
#else
#define VIRTUFIN_EXPORT
#endif

#if defined(__cplusplus)
#define VIRTUFIN_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define VIRTUFIN_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/**
 * What the host hands to every Process call. Layout is part of the ABI: 40 bytes on 64-bit
 * platforms (void* at 0, int32_t at 8 padded to 16, three function pointers at 16, 24, 32).
 *
 * The first argument of each callback is `engine_ptr` (use virtufin_log() and
 * virtufin_gateway_call(), which pass it for you).
 */
typedef struct VirtufinHost {
    /** Opaque handle for the host's own use. Never dereference it. */
    void* engine_ptr;
    /** VIRTUFIN_ABI_VERSION of the host (currently 1). */
    int32_t abi_version;
    /** Logs `message` (NUL-terminated UTF-8, read only during the call) at `level`
     *  (VIRTUFIN_LOG_TRACE..VIRTUFIN_LOG_ERROR). */
    void (*log)(void* engine_ptr, int32_t level, const char* message);
    /** Calls a Gateway service: `service` (e.g. "workmanager"), gRPC `method` in PascalCase,
     *  `req` a UTF-8 JSON object of `req_len` bytes. Returns 0 on success with a host-allocated
     *  JSON reply in (*resp, *resp_len), to be released with free_response; non-zero on failure. */
    int32_t (*gateway_call)(void* engine_ptr, const char* service, const char* method,
                            const uint8_t* req, int32_t req_len, uint8_t** resp,
                            int32_t* resp_len);
    /** Releases a reply returned by gateway_call (exactly once). */
    void (*free_response)(void* engine_ptr, uint8_t* resp);
} VirtufinHost;

VIRTUFIN_STATIC_ASSERT(sizeof(void*) == 8,
                       "the Virtufin worker ABI v1 supports 64-bit platforms only");
VIRTUFIN_STATIC_ASSERT(sizeof(VirtufinHost) == 40, "VirtufinHost must be 40 bytes");
VIRTUFIN_STATIC_ASSERT(offsetof(VirtufinHost, engine_ptr) == 0, "engine_ptr at offset 0");
VIRTUFIN_STATIC_ASSERT(offsetof(VirtufinHost, abi_version) == 8, "abi_version at offset 8");
VIRTUFIN_STATIC_ASSERT(offsetof(VirtufinHost, log) == 16, "log at offset 16");
VIRTUFIN_STATIC_ASSERT(offsetof(VirtufinHost, gateway_call) == 24, "gateway_call at offset 24");
VIRTUFIN_STATIC_ASSERT(offsetof(VirtufinHost, free_response) == 32,
                       "free_response at offset 32");

/**
 * Handles one CloudEvent. Returns 0 on success, non-zero on an internal failure. Sets *out_buf
 * to a malloc'd WorkerResponse FlatBuffer of *out_len bytes, or to NULL (no reply).
 * Workers define this function; the host resolves it by name (nuspec virtufinEntryPoint).
 */
VIRTUFIN_EXPORT int32_t Process(const VirtufinHost* host, const uint8_t* in_buf, int32_t in_len,
                                uint8_t** out_buf, int32_t* out_len);

/** Releases a buffer Process returned in *out_buf; the host calls it exactly once per non-NULL
 *  buffer. Must match the allocator: `free(result);` for the builders below. */
VIRTUFIN_EXPORT void FreeResult(uint8_t* result);

/* ---------------------------------------------------------------------------------------------
 * Host callback wrappers
 * ------------------------------------------------------------------------------------------- */

/** Logs a message through the host; does nothing when host or its log callback is NULL. */
static inline void virtufin_log(const VirtufinHost* host, int32_t level, const char* message) {
    if (host != NULL && host->log != NULL && message != NULL) {
        host->log(host->engine_ptr, level, message);
    }
}

/** printf-style virtufin_log(); messages longer than 1023 bytes are truncated. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
static inline void
virtufin_logf(const VirtufinHost* host, int32_t level, const char* format, ...) {
    char msg[1024];
    va_list ap;
    if (host == NULL || host->log == NULL || format == NULL) {
        return;
    }
    va_start(ap, format);
    (void)vsnprintf(msg, sizeof msg, format, ap);
    va_end(ap);
    host->log(host->engine_ptr, level, msg);
}

/** Calls host->gateway_call; returns -1 (and NULL/0 outputs) when the host has no gateway.
 *  Release a non-NULL *resp with virtufin_free_gateway_response(). */
static inline int32_t virtufin_gateway_call(const VirtufinHost* host, const char* service,
                                            const char* method, const uint8_t* req,
                                            int32_t req_len, uint8_t** resp, int32_t* resp_len) {
    if (resp != NULL) {
        *resp = NULL;
    }
    if (resp_len != NULL) {
        *resp_len = 0;
    }
    if (host == NULL || host->gateway_call == NULL || resp == NULL || resp_len == NULL) {
        return -1;
    }
    return host->gateway_call(host->engine_ptr, service, method, req, req_len, resp, resp_len);
}

/** Releases a gateway reply; NULL is ignored. */
static inline void virtufin_free_gateway_response(const VirtufinHost* host, uint8_t* resp) {
    if (host != NULL && host->free_response != NULL && resp != NULL) {
        host->free_response(host->engine_ptr, resp);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Reader: the input CloudEvent
 * ------------------------------------------------------------------------------------------- */

/** Success. */
#define VIRTUFIN_FB_OK 0
/** The optional field, or the extension looked up, is not present (not an error). */
#define VIRTUFIN_FB_ABSENT 1
/** A NULL pointer, a negative length, or a reader that was not opened successfully. */
#define VIRTUFIN_FB_ERR_ARG (-1)
/** An offset or length points outside the buffer (includes buffers shorter than 4 bytes). */
#define VIRTUFIN_FB_ERR_BOUNDS (-2)
/** An offset is not aligned as FlatBuffers requires. */
#define VIRTUFIN_FB_ERR_ALIGN (-3)
/** A vtable is malformed: size odd or below 4, table size below 4, or a field outside the table. */
#define VIRTUFIN_FB_ERR_VTABLE (-4)
/** A string is not NUL-terminated. */
#define VIRTUFIN_FB_ERR_NUL (-5)
/** A string is not valid UTF-8. */
#define VIRTUFIN_FB_ERR_UTF8 (-6)
/** Extension index out of range. */
#define VIRTUFIN_FB_ERR_INDEX (-7)
/** The buffer would make virtufin_event_open() visit more than VIRTUFIN_FB_MAX_VISIT_FACTOR
 *  times its length (shared sub-objects). */
#define VIRTUFIN_FB_ERR_LIMIT (-8)

/** Bound on the bytes virtufin_event_open() visits, as a multiple of the buffer length. */
#define VIRTUFIN_FB_MAX_VISIT_FACTOR 8u

/** Field slots of the CloudEvent table (schema order; this order is part of the ABI). */
#define VIRTUFIN_CE_ID 0
#define VIRTUFIN_CE_TYPE 1
#define VIRTUFIN_CE_SOURCE 2
#define VIRTUFIN_CE_SPECVERSION 3
#define VIRTUFIN_CE_DATACONTENTTYPE 4
#define VIRTUFIN_CE_DATASCHEMA 5
#define VIRTUFIN_CE_SUBJECT 6
#define VIRTUFIN_CE_TIME 7
#define VIRTUFIN_CE_DATA 8
#define VIRTUFIN_CE_EXTENSIONS 9

/** An opened CloudEvent. Fill it with virtufin_event_open(); treat the fields as private. */
typedef struct VirtufinEvent {
    const uint8_t* buf;
    uint32_t len;
    uint32_t table; /* position of the root table */
} VirtufinEvent;

/** A short description of a reader code, for logs. Never NULL. */
static inline const char* virtufin_fb_strerror(int32_t code) {
    switch (code) {
    case VIRTUFIN_FB_OK:
        return "ok";
    case VIRTUFIN_FB_ABSENT:
        return "field not present";
    case VIRTUFIN_FB_ERR_ARG:
        return "invalid argument (NULL pointer, negative length or reader not opened)";
    case VIRTUFIN_FB_ERR_BOUNDS:
        return "offset or length points outside the buffer";
    case VIRTUFIN_FB_ERR_ALIGN:
        return "misaligned offset";
    case VIRTUFIN_FB_ERR_VTABLE:
        return "malformed vtable";
    case VIRTUFIN_FB_ERR_NUL:
        return "string not NUL-terminated";
    case VIRTUFIN_FB_ERR_UTF8:
        return "string is not valid UTF-8";
    case VIRTUFIN_FB_ERR_INDEX:
        return "extension index out of range";
    case VIRTUFIN_FB_ERR_LIMIT:
        return "buffer too complex (shared sub-objects exceed the visit limit)";
    default:
        return "unknown error";
    }
}

/* Internal helpers (names with a double underscore are not part of the API). */

static inline uint32_t virtufin_fb__ld32(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint32_t virtufin_fb__ld16(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

/** Strict UTF-8 check (no overlongs, no surrogates, nothing above U+10FFFF). */
static inline int virtufin_fb__utf8_ok(const uint8_t* s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint32_t c = s[i];
        uint64_t need;
        uint32_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) {
                lo = 0xA0;
            } else if (c == 0xED) {
                hi = 0x9F;
            }
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) {
                lo = 0x90;
            } else if (c == 0xF4) {
                hi = 0x8F;
            }
        } else {
            return 0;
        }
        if (n - i <= need) {
            return 0;
        }
        if (s[i + 1] < lo || s[i + 1] > hi) {
            return 0;
        }
        {
            uint64_t k;
            for (k = 2; k <= need; k++) {
                if (s[i + k] < 0x80 || s[i + k] > 0xBF) {
                    return 0;
                }
            }
        }
        i += need + 1;
    }
    return 1;
}

/** Checks the table at `pos` and its vtable; returns the vtable position and sizes. */
static inline int32_t virtufin_fb__table(const uint8_t* buf, uint32_t len, uint64_t pos,
                                         uint64_t* vt, uint32_t* vt_size, uint32_t* tbl_size) {
    uint32_t raw;
    int64_t so, v;
    if (pos % 4 != 0) {
        return VIRTUFIN_FB_ERR_ALIGN;
    }
    if (pos + 4 > len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    raw = virtufin_fb__ld32(buf + pos);
    /* soffset_t is signed: vtable = table - soffset. */
    so = raw <= 0x7FFFFFFFu ? (int64_t)raw : (int64_t)raw - (int64_t)4294967296LL;
    v = (int64_t)pos - so;
    if (v < 0 || v + 4 > (int64_t)len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    if (v % 2 != 0) {
        return VIRTUFIN_FB_ERR_ALIGN;
    }
    *vt_size = virtufin_fb__ld16(buf + v);
    *tbl_size = virtufin_fb__ld16(buf + v + 2);
    if (*vt_size < 4 || *vt_size % 2 != 0 || *tbl_size < 4) {
        return VIRTUFIN_FB_ERR_VTABLE;
    }
    if ((uint64_t)v + *vt_size > len || pos + *tbl_size > len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    *vt = (uint64_t)v;
    return VIRTUFIN_FB_OK;
}

/** Finds the offset field in `slot` of the table at `pos` and follows it to its target. */
static inline int32_t virtufin_fb__follow(const uint8_t* buf, uint32_t len, uint64_t pos,
                                          uint32_t slot, uint64_t* target) {
    uint64_t vt, field;
    uint32_t vt_size, tbl_size, fo;
    int32_t rc = virtufin_fb__table(buf, len, pos, &vt, &vt_size, &tbl_size);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    if (4u + 2u * (uint64_t)slot + 2u > vt_size) {
        return VIRTUFIN_FB_ABSENT; /* the vtable predates this field */
    }
    fo = virtufin_fb__ld16(buf + vt + 4 + 2 * (uint64_t)slot);
    if (fo == 0) {
        return VIRTUFIN_FB_ABSENT;
    }
    if (fo < 4 || (uint64_t)fo + 4 > tbl_size) {
        return VIRTUFIN_FB_ERR_VTABLE;
    }
    field = pos + fo; /* inside the table, which is inside the buffer */
    if (field % 4 != 0) {
        return VIRTUFIN_FB_ERR_ALIGN;
    }
    *target = field + virtufin_fb__ld32(buf + field);
    return VIRTUFIN_FB_OK;
}

/** Checks the string at `pos`. */
static inline int32_t virtufin_fb__string(const uint8_t* buf, uint32_t len, uint64_t pos,
                                          const char** out, int32_t* out_len) {
    uint64_t n;
    if (pos % 4 != 0) {
        return VIRTUFIN_FB_ERR_ALIGN;
    }
    if (pos + 4 > len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    n = virtufin_fb__ld32(buf + pos);
    if (pos + 4 + n > len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    if (pos + 4 + n + 1 > len || buf[pos + 4 + n] != 0) {
        return VIRTUFIN_FB_ERR_NUL;
    }
    if (!virtufin_fb__utf8_ok(buf + pos + 4, n)) {
        return VIRTUFIN_FB_ERR_UTF8;
    }
    *out = (const char*)(buf + pos + 4);
    *out_len = (int32_t)n; /* n < len <= INT32_MAX */
    return VIRTUFIN_FB_OK;
}

/** Checks the vector header at `pos` for `count` elements of `elem` bytes. */
static inline int32_t virtufin_fb__vector(const uint8_t* buf, uint32_t len, uint64_t pos,
                                          uint32_t elem, uint32_t* count) {
    uint64_t n;
    if (pos % 4 != 0) {
        return VIRTUFIN_FB_ERR_ALIGN;
    }
    if (pos + 4 > len) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    n = virtufin_fb__ld32(buf + pos);
    if (pos + 4 + n * elem > len) { /* n < 2^32, elem <= 4: no overflow in 64 bits */
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    *count = (uint32_t)n;
    return VIRTUFIN_FB_OK;
}

/** A string field of the table at `table`. */
static inline int32_t virtufin_fb__string_field(const uint8_t* buf, uint32_t len, uint64_t table,
                                                uint32_t slot, const char** out,
                                                int32_t* out_len) {
    uint64_t target = 0;
    int32_t rc = virtufin_fb__follow(buf, len, table, slot, &target);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    return virtufin_fb__string(buf, len, target, out, out_len);
}

static inline int32_t virtufin_fb__check_event(const VirtufinEvent* ev) {
    if (ev == NULL || ev->buf == NULL || ev->len < 4 || ev->len > 0x7FFFFFFFu) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    return VIRTUFIN_FB_OK;
}

/**
 * Reads string attribute `slot` (VIRTUFIN_CE_ID..VIRTUFIN_CE_TIME). On VIRTUFIN_FB_OK, *out
 * points at the NUL-terminated bytes in the buffer and *out_len (if not NULL) is their length.
 * On any other code *out is NULL and *out_len 0.
 */
static inline int32_t virtufin_event_get_string(const VirtufinEvent* ev, int32_t slot,
                                                const char** out, int32_t* out_len) {
    const char* s = NULL;
    int32_t n = 0;
    int32_t rc;
    if (out != NULL) {
        *out = NULL;
    }
    if (out_len != NULL) {
        *out_len = 0;
    }
    rc = virtufin_fb__check_event(ev);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    if (out == NULL || slot < VIRTUFIN_CE_ID || slot > VIRTUFIN_CE_TIME) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    rc = virtufin_fb__string_field(ev->buf, ev->len, ev->table, (uint32_t)slot, &s, &n);
    if (rc == VIRTUFIN_FB_OK) {
        *out = s;
        if (out_len != NULL) {
            *out_len = n;
        }
    }
    return rc;
}

/* Convenience accessors: the attribute, or NULL when it is absent or malformed. */
static inline const char* virtufin_event__str(const VirtufinEvent* ev, int32_t slot) {
    const char* s = NULL;
    (void)virtufin_event_get_string(ev, slot, &s, NULL);
    return s;
}
/** The `id` attribute, or NULL. */
static inline const char* virtufin_event_id(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_ID);
}
/** The `type` attribute, or NULL. */
static inline const char* virtufin_event_type(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_TYPE);
}
/** The `source` attribute, or NULL. */
static inline const char* virtufin_event_source(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_SOURCE);
}
/** The `specversion` attribute, or NULL. */
static inline const char* virtufin_event_specversion(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_SPECVERSION);
}
/** The `datacontenttype` attribute, or NULL. */
static inline const char* virtufin_event_datacontenttype(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_DATACONTENTTYPE);
}
/** The `dataschema` attribute, or NULL. */
static inline const char* virtufin_event_dataschema(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_DATASCHEMA);
}
/** The `subject` attribute, or NULL. */
static inline const char* virtufin_event_subject(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_SUBJECT);
}
/** The `time` attribute, or NULL. */
static inline const char* virtufin_event_time(const VirtufinEvent* ev) {
    return virtufin_event__str(ev, VIRTUFIN_CE_TIME);
}

/**
 * The `data` payload (arbitrary bytes, not NUL-terminated). VIRTUFIN_FB_OK with *out pointing
 * into the buffer (possibly *out_len == 0), VIRTUFIN_FB_ABSENT when the event has no data, or an
 * error; *out is NULL and *out_len 0 unless the result is VIRTUFIN_FB_OK.
 */
static inline int32_t virtufin_event_data(const VirtufinEvent* ev, const uint8_t** out,
                                          int32_t* out_len) {
    uint64_t target = 0;
    uint32_t n = 0;
    int32_t rc;
    if (out != NULL) {
        *out = NULL;
    }
    if (out_len != NULL) {
        *out_len = 0;
    }
    rc = virtufin_fb__check_event(ev);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    if (out == NULL || out_len == NULL) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    rc = virtufin_fb__follow(ev->buf, ev->len, ev->table, VIRTUFIN_CE_DATA, &target);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    rc = virtufin_fb__vector(ev->buf, ev->len, target, 1, &n);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    *out = ev->buf + target + 4;
    *out_len = (int32_t)n;
    return VIRTUFIN_FB_OK;
}

/** The extensions vector: its position and length (0 when absent). */
static inline int32_t virtufin_event__extensions(const VirtufinEvent* ev, uint64_t* vec,
                                                 uint32_t* count) {
    int32_t rc = virtufin_fb__check_event(ev);
    *count = 0;
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    rc = virtufin_fb__follow(ev->buf, ev->len, ev->table, VIRTUFIN_CE_EXTENSIONS, vec);
    if (rc == VIRTUFIN_FB_ABSENT) {
        return VIRTUFIN_FB_OK;
    }
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    return virtufin_fb__vector(ev->buf, ev->len, *vec, 4, count);
}

/**
 * The number of extensions (>= 0; 0 when the event has none), or a negative error code when the
 * extensions vector is malformed. The `correlationid` extension, when present, is entry 0.
 */
static inline int32_t virtufin_event_extension_count(const VirtufinEvent* ev) {
    uint64_t vec = 0;
    uint32_t count = 0;
    int32_t rc = virtufin_event__extensions(ev, &vec, &count);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    return (int32_t)count; /* count * 4 < len <= INT32_MAX */
}

/**
 * Extension number `index` (0-based). On VIRTUFIN_FB_OK, *name and *value point at
 * NUL-terminated strings in the buffer, or are NULL when the entry lacks that field (the host
 * never sends such entries). Lengths are optional (pass NULL). All outputs are NULL/0 unless the
 * result is VIRTUFIN_FB_OK. VIRTUFIN_FB_ERR_INDEX when index is out of range.
 */
static inline int32_t virtufin_event_extension_at(const VirtufinEvent* ev, int32_t index,
                                                  const char** name, int32_t* name_len,
                                                  const char** value, int32_t* value_len) {
    uint64_t vec = 0, elem, table;
    uint32_t count = 0;
    const char *n = NULL, *v = NULL;
    int32_t nl = 0, vl = 0;
    int32_t rc;
    if (name != NULL) {
        *name = NULL;
    }
    if (name_len != NULL) {
        *name_len = 0;
    }
    if (value != NULL) {
        *value = NULL;
    }
    if (value_len != NULL) {
        *value_len = 0;
    }
    rc = virtufin_event__extensions(ev, &vec, &count);
    if (rc != VIRTUFIN_FB_OK) {
        return rc;
    }
    if (name == NULL || value == NULL) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    if (index < 0 || (uint32_t)index >= count) {
        return VIRTUFIN_FB_ERR_INDEX;
    }
    elem = vec + 4 + 4 * (uint64_t)index; /* inside the checked vector */
    table = elem + virtufin_fb__ld32(ev->buf + elem);
    rc = virtufin_fb__string_field(ev->buf, ev->len, table, 0, &n, &nl);
    if (rc < 0) {
        return rc;
    }
    rc = virtufin_fb__string_field(ev->buf, ev->len, table, 1, &v, &vl);
    if (rc < 0) {
        return rc;
    }
    *name = n;
    *value = v;
    if (name_len != NULL) {
        *name_len = nl;
    }
    if (value_len != NULL) {
        *value_len = vl;
    }
    return VIRTUFIN_FB_OK;
}

/**
 * Looks up the first extension called `name` (compared byte for byte, whole string).
 * VIRTUFIN_FB_OK with *value (NULL if the entry has no value) and *value_len (optional),
 * VIRTUFIN_FB_ABSENT when no extension has that name, or an error code.
 */
static inline int32_t virtufin_event_find_extension(const VirtufinEvent* ev, const char* name,
                                                    const char** value, int32_t* value_len) {
    int32_t count, i;
    size_t want;
    if (value != NULL) {
        *value = NULL;
    }
    if (value_len != NULL) {
        *value_len = 0;
    }
    if (name == NULL || value == NULL) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    count = virtufin_event_extension_count(ev);
    if (count < 0) {
        return count;
    }
    want = strlen(name);
    for (i = 0; i < count; i++) {
        const char *n = NULL, *v = NULL;
        int32_t nl = 0, vl = 0;
        int32_t rc = virtufin_event_extension_at(ev, i, &n, &nl, &v, &vl);
        if (rc != VIRTUFIN_FB_OK) {
            return rc;
        }
        if (n != NULL && (size_t)nl == want && memcmp(n, name, want) == 0) {
            *value = v;
            if (value_len != NULL) {
                *value_len = vl;
            }
            return VIRTUFIN_FB_OK;
        }
    }
    return VIRTUFIN_FB_ABSENT;
}

/** The value of the first extension called `name`, or NULL (absent, no value, or malformed). */
static inline const char* virtufin_event_extension(const VirtufinEvent* ev, const char* name) {
    const char* v = NULL;
    (void)virtufin_event_find_extension(ev, name, &v, NULL);
    return v;
}

/**
 * Opens `buf` (a CloudEvent FlatBuffer of `len` bytes) and verifies all of it: every attribute,
 * `data`, and every extension. On VIRTUFIN_FB_OK the accessors above read from `ev` (they check
 * again, so they stay safe whatever happens). On error `ev` is left unusable (accessors return
 * VIRTUFIN_FB_ERR_ARG). The buffer must stay alive and unchanged while `ev` is used.
 */
static inline int32_t virtufin_event_open(VirtufinEvent* ev, const uint8_t* buf, int32_t len) {
    VirtufinEvent e;
    uint64_t vt, visited = 0, budget;
    uint32_t vt_size = 0, tbl_size = 0;
    int32_t rc, slot, count, i;
    if (ev == NULL) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    ev->buf = NULL;
    ev->len = 0;
    ev->table = 0;
    if (buf == NULL || len < 0) {
        return VIRTUFIN_FB_ERR_ARG;
    }
    if (len < 4) {
        return VIRTUFIN_FB_ERR_BOUNDS;
    }
    e.buf = buf;
    e.len = (uint32_t)len;
    {
        uint64_t root = virtufin_fb__ld32(buf);
        rc = virtufin_fb__table(buf, e.len, root, &vt, &vt_size, &tbl_size);
        if (rc != VIRTUFIN_FB_OK) {
            return rc;
        }
        e.table = (uint32_t)root; /* checked: root + 4 <= len */
    }
    budget = (uint64_t)VIRTUFIN_FB_MAX_VISIT_FACTOR * e.len;
    visited += vt_size + tbl_size;
    for (slot = VIRTUFIN_CE_ID; slot <= VIRTUFIN_CE_TIME; slot++) {
        const char* s = NULL;
        int32_t n = 0;
        rc = virtufin_event_get_string(&e, slot, &s, &n);
        if (rc < 0) {
            return rc;
        }
        visited += 4 + (uint64_t)n + 1;
    }
    {
        const uint8_t* d = NULL;
        int32_t n = 0;
        rc = virtufin_event_data(&e, &d, &n);
        if (rc < 0) {
            return rc;
        }
        visited += 4 + (uint64_t)n;
    }
    count = virtufin_event_extension_count(&e);
    if (count < 0) {
        return count;
    }
    visited += 4 + 4 * (uint64_t)count;
    for (i = 0; i < count; i++) {
        const char *n = NULL, *v = NULL;
        int32_t nl = 0, vl = 0;
        if (visited > budget) {
            return VIRTUFIN_FB_ERR_LIMIT;
        }
        rc = virtufin_event_extension_at(&e, i, &n, &nl, &v, &vl);
        if (rc != VIRTUFIN_FB_OK) {
            return rc;
        }
        visited += 16 + (uint64_t)nl + (uint64_t)vl;
    }
    if (visited > budget) {
        return VIRTUFIN_FB_ERR_LIMIT;
    }
    *ev = e;
    return VIRTUFIN_FB_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Builders: the reply
 * ------------------------------------------------------------------------------------------- */

/** One extension attribute: both strings NUL-terminated UTF-8, neither NULL. */
typedef struct VirtufinExtension {
    const char* name;
    const char* value;
} VirtufinExtension;

/**
 * A CloudEvent to build. Start from virtufin_event_spec(id, type, source) (or zero-initialise
 * it) and set what you need. id, type and source are required; every other string is optional
 * (NULL = absent), except specversion, which defaults to "1.0".
 * data: NULL with data_len 0 = no data; non-NULL with data_len 0 = empty data.
 * Extensions are written in the given order; put `correlationid` first (copy it from the input
 * event so the reply pairs with the request).
 */
typedef struct VirtufinEventSpec {
    const char* id;
    const char* type;
    const char* source;
    const char* specversion;
    const char* datacontenttype;
    const char* dataschema;
    const char* subject;
    const char* time;
    const uint8_t* data;
    int32_t data_len;
    const VirtufinExtension* extensions;
    int32_t extension_count;
} VirtufinEventSpec;

/** A VirtufinEventSpec with the three required attributes set and everything else absent
 *  (the same in C and C++, where `= {0}` draws -Wmissing-field-initializers). */
static inline VirtufinEventSpec virtufin_event_spec(const char* id, const char* type,
                                                    const char* source) {
    VirtufinEventSpec ev;
    memset(&ev, 0, sizeof ev);
    ev.id = id;
    ev.type = type;
    ev.source = source;
    return ev;
}

/* A back-to-front FlatBuffers builder over one malloc'd block, like the official builders:
 * children are written first at the end of the block, so every uoffset points forward.
 * Positions are tracked as distances from the end ("dist"); alignment is relative to the end and
 * the finished size is a multiple of 4, so it also holds relative to the start. */
typedef struct VirtufinFb__Builder {
    uint8_t* buf;
    uint64_t cap;
    uint64_t used;
    int failed;
} VirtufinFb__Builder;

static inline void virtufin_fb__push(VirtufinFb__Builder* b, const void* src, uint64_t n) {
    if (b->failed || n > b->cap - b->used) {
        b->failed = 1;
        return;
    }
    b->used += n;
    if (n > 0) {
        memcpy(b->buf + (b->cap - b->used), src, (size_t)n);
    }
}

/* Pads with zeros so that after pushing `len` more bytes, `used` is a multiple of `align`. */
static inline void virtufin_fb__pad(VirtufinFb__Builder* b, uint64_t len, uint64_t align) {
    static const uint8_t zeros[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint64_t pad = (align - ((b->used + len) % align)) % align;
    virtufin_fb__push(b, zeros, pad);
}

static inline void virtufin_fb__push_u32(VirtufinFb__Builder* b, uint32_t v) {
    uint8_t le[4];
    le[0] = (uint8_t)(v & 0xFF);
    le[1] = (uint8_t)((v >> 8) & 0xFF);
    le[2] = (uint8_t)((v >> 16) & 0xFF);
    le[3] = (uint8_t)((v >> 24) & 0xFF);
    virtufin_fb__push(b, le, 4);
}

static inline void virtufin_fb__push_u16(VirtufinFb__Builder* b, uint32_t v) {
    uint8_t le[2];
    le[0] = (uint8_t)(v & 0xFF);
    le[1] = (uint8_t)((v >> 8) & 0xFF);
    virtufin_fb__push(b, le, 2);
}

/* A uoffset to the object at distance `target` (already written). */
static inline void virtufin_fb__push_ref(VirtufinFb__Builder* b, uint64_t target) {
    virtufin_fb__pad(b, 4, 4);
    virtufin_fb__push_u32(b, (uint32_t)(b->used + 4 - target));
}

/* A string: u32 length, bytes, NUL; the length 4-aligned. Returns its distance. */
static inline uint64_t virtufin_fb__string_w(VirtufinFb__Builder* b, const char* s) {
    uint64_t n = strlen(s);
    static const uint8_t nul = 0;
    virtufin_fb__pad(b, n + 1, 4);
    virtufin_fb__push(b, &nul, 1);
    virtufin_fb__push(b, s, n);
    virtufin_fb__push_u32(b, (uint32_t)n);
    return b->used;
}

/* A [ubyte] vector. Returns its distance. */
static inline uint64_t virtufin_fb__bytes_w(VirtufinFb__Builder* b, const uint8_t* d,
                                            uint64_t n) {
    virtufin_fb__pad(b, n, 4);
    virtufin_fb__push(b, d, n);
    virtufin_fb__push_u32(b, (uint32_t)n);
    return b->used;
}

/* A table whose fields are all offsets: child[i] is the distance of slot i's target, 0 when the
 * slot is absent (a real target is never at distance 0). Returns the table's distance. */
static inline uint64_t virtufin_fb__table_w(VirtufinFb__Builder* b, const uint64_t* child,
                                            uint32_t nslots) {
    uint64_t field[16];
    uint64_t tdist, vtdist;
    uint32_t i, present = 0, nvt = 0;
    if (nslots > 16) {
        b->failed = 1;
        return 0;
    }
    virtufin_fb__pad(b, 0, 4);
    for (i = nslots; i-- > 0;) {
        field[i] = 0;
        if (child[i] != 0) {
            virtufin_fb__push_ref(b, child[i]);
            field[i] = b->used;
            present++;
            if (nvt == 0) {
                nvt = i + 1;
            }
        }
    }
    virtufin_fb__push_u32(b, 0); /* soffset to the vtable, patched below */
    tdist = b->used;
    for (i = nvt; i-- > 0;) {
        virtufin_fb__push_u16(b, child[i] != 0 ? (uint32_t)(tdist - field[i]) : 0u);
    }
    virtufin_fb__push_u16(b, 4 + 4 * present);
    virtufin_fb__push_u16(b, 4 + 2 * nvt);
    vtdist = b->used;
    if (!b->failed) {
        /* vtable sits just before the table: vtable = table - soffset, soffset > 0. */
        uint32_t so = (uint32_t)(vtdist - tdist);
        uint8_t* p = b->buf + (b->cap - tdist);
        p[0] = (uint8_t)(so & 0xFF);
        p[1] = (uint8_t)((so >> 8) & 0xFF);
        p[2] = (uint8_t)((so >> 16) & 0xFF);
        p[3] = (uint8_t)((so >> 24) & 0xFF);
    }
    return tdist;
}

/* Upper bounds of the bytes each kind of object takes, padding included. */
static inline uint64_t virtufin_fb__string_cap(const char* s) {
    return s == NULL ? 0 : 4 + (uint64_t)strlen(s) + 1 + 3;
}
#define VIRTUFIN_FB__TABLE_CAP(nslots) (3u + 4u + 4u * (nslots) + 4u + 2u * (nslots) + 2u)

static inline int virtufin_fb__opt_str_ok(const char* s) {
    return s == NULL || virtufin_fb__utf8_ok((const uint8_t*)s, strlen(s));
}

static inline int virtufin_fb__req_str_ok(const char* s) {
    return s != NULL && virtufin_fb__utf8_ok((const uint8_t*)s, strlen(s));
}

/* Validates a spec and returns an upper bound of its encoded size, or 0 when invalid. */
static inline uint64_t virtufin_fb__event_cap(const VirtufinEventSpec* ev) {
    uint64_t cap;
    int32_t i;
    if (!virtufin_fb__req_str_ok(ev->id) || !virtufin_fb__req_str_ok(ev->type) ||
        !virtufin_fb__req_str_ok(ev->source) || !virtufin_fb__opt_str_ok(ev->specversion) ||
        !virtufin_fb__opt_str_ok(ev->datacontenttype) ||
        !virtufin_fb__opt_str_ok(ev->dataschema) || !virtufin_fb__opt_str_ok(ev->subject) ||
        !virtufin_fb__opt_str_ok(ev->time)) {
        return 0;
    }
    if (ev->data_len < 0 || (ev->data == NULL && ev->data_len > 0) || ev->extension_count < 0 ||
        (ev->extensions == NULL && ev->extension_count > 0)) {
        return 0;
    }
    cap = VIRTUFIN_FB__TABLE_CAP(10u) + virtufin_fb__string_cap(ev->id) +
          virtufin_fb__string_cap(ev->type) + virtufin_fb__string_cap(ev->source) +
          virtufin_fb__string_cap(ev->specversion != NULL ? ev->specversion : "1.0") +
          virtufin_fb__string_cap(ev->datacontenttype) + virtufin_fb__string_cap(ev->dataschema) +
          virtufin_fb__string_cap(ev->subject) + virtufin_fb__string_cap(ev->time);
    if (ev->data != NULL) {
        cap += 4 + (uint64_t)ev->data_len + 3;
    }
    if (ev->extension_count > 0) {
        cap += 4 + 4 * (uint64_t)ev->extension_count + 3;
        for (i = 0; i < ev->extension_count; i++) {
            const VirtufinExtension* x = &ev->extensions[i];
            if (!virtufin_fb__req_str_ok(x->name) || !virtufin_fb__req_str_ok(x->value)) {
                return 0;
            }
            cap += VIRTUFIN_FB__TABLE_CAP(2u) + virtufin_fb__string_cap(x->name) +
                   virtufin_fb__string_cap(x->value);
            if (cap > 0x7FFFFFFFu) {
                return 0;
            }
        }
    }
    return cap;
}

/* Writes a validated event; returns the CloudEvent table's distance. */
static inline uint64_t virtufin_fb__event_w(VirtufinFb__Builder* b, const VirtufinEventSpec* ev) {
    uint64_t child[10];
    int32_t i;
    memset(child, 0, sizeof child);
    if (ev->extension_count > 0) {
        uint64_t* ext = (uint64_t*)malloc(sizeof(uint64_t) * (size_t)ev->extension_count);
        if (ext == NULL) {
            b->failed = 1;
            return 0;
        }
        for (i = ev->extension_count; i-- > 0;) {
            uint64_t kv[2];
            kv[1] = virtufin_fb__string_w(b, ev->extensions[i].value);
            kv[0] = virtufin_fb__string_w(b, ev->extensions[i].name);
            ext[i] = virtufin_fb__table_w(b, kv, 2);
        }
        virtufin_fb__pad(b, 4 * (uint64_t)ev->extension_count, 4);
        for (i = ev->extension_count; i-- > 0;) {
            virtufin_fb__push_ref(b, ext[i]);
        }
        virtufin_fb__push_u32(b, (uint32_t)ev->extension_count);
        child[VIRTUFIN_CE_EXTENSIONS] = b->used;
        free(ext);
    }
    if (ev->data != NULL) {
        child[VIRTUFIN_CE_DATA] = virtufin_fb__bytes_w(b, ev->data, (uint64_t)ev->data_len);
    }
    if (ev->time != NULL) {
        child[VIRTUFIN_CE_TIME] = virtufin_fb__string_w(b, ev->time);
    }
    if (ev->subject != NULL) {
        child[VIRTUFIN_CE_SUBJECT] = virtufin_fb__string_w(b, ev->subject);
    }
    if (ev->dataschema != NULL) {
        child[VIRTUFIN_CE_DATASCHEMA] = virtufin_fb__string_w(b, ev->dataschema);
    }
    if (ev->datacontenttype != NULL) {
        child[VIRTUFIN_CE_DATACONTENTTYPE] = virtufin_fb__string_w(b, ev->datacontenttype);
    }
    child[VIRTUFIN_CE_SPECVERSION] =
        virtufin_fb__string_w(b, ev->specversion != NULL ? ev->specversion : "1.0");
    child[VIRTUFIN_CE_SOURCE] = virtufin_fb__string_w(b, ev->source);
    child[VIRTUFIN_CE_TYPE] = virtufin_fb__string_w(b, ev->type);
    child[VIRTUFIN_CE_ID] = virtufin_fb__string_w(b, ev->id);
    return virtufin_fb__table_w(b, child, 10);
}

static inline int virtufin_fb__begin(VirtufinFb__Builder* b, uint64_t cap) {
    cap += 4 + 3; /* root offset and its padding */
    b->buf = NULL;
    b->cap = cap;
    b->used = 0;
    b->failed = 0;
    if (cap > 0x7FFFFFFFu) {
        return 0;
    }
    b->buf = (uint8_t*)malloc((size_t)cap);
    return b->buf != NULL;
}

/* Writes the root offset, moves the bytes to the start of the block and hands it over. */
static inline uint8_t* virtufin_fb__finish(VirtufinFb__Builder* b, uint64_t root,
                                           int32_t* out_len) {
    virtufin_fb__push_ref(b, root);
    if (b->failed || b->used > 0x7FFFFFFFu) {
        free(b->buf);
        *out_len = 0;
        return NULL;
    }
    memmove(b->buf, b->buf + (b->cap - b->used), (size_t)b->used);
    *out_len = (int32_t)b->used;
    return b->buf;
}

/**
 * Builds a WorkerResponse with `result_event` (NULL = none) and `error_message` (NULL = none).
 * Both NULL gives an empty response (no reply). Returns a malloc'd buffer or NULL.
 */
static inline uint8_t* virtufin_build_worker_response(const VirtufinEventSpec* result_event,
                                                      const char* error_message,
                                                      int32_t* out_len) {
    VirtufinFb__Builder b;
    uint64_t cap = VIRTUFIN_FB__TABLE_CAP(2u), child[2] = {0, 0};
    if (out_len == NULL) {
        return NULL;
    }
    *out_len = 0;
    if (!virtufin_fb__opt_str_ok(error_message)) {
        return NULL;
    }
    cap += virtufin_fb__string_cap(error_message);
    if (result_event != NULL) {
        uint64_t ev_cap = virtufin_fb__event_cap(result_event);
        if (ev_cap == 0) {
            return NULL;
        }
        cap += ev_cap;
    }
    if (!virtufin_fb__begin(&b, cap)) {
        return NULL;
    }
    if (error_message != NULL) {
        child[1] = virtufin_fb__string_w(&b, error_message);
    }
    if (result_event != NULL) {
        child[0] = virtufin_fb__event_w(&b, result_event);
    }
    return virtufin_fb__finish(&b, virtufin_fb__table_w(&b, child, 2), out_len);
}

/** Builds a WorkerResponse carrying only `error_message` (required). */
static inline uint8_t* virtufin_build_error_response(const char* error_message,
                                                     int32_t* out_len) {
    if (error_message == NULL) {
        if (out_len != NULL) {
            *out_len = 0;
        }
        return NULL;
    }
    return virtufin_build_worker_response(NULL, error_message, out_len);
}

/** Builds a bare CloudEvent buffer (root CloudEvent, the same format Process receives). */
static inline uint8_t* virtufin_build_cloud_event(const VirtufinEventSpec* ev, int32_t* out_len) {
    VirtufinFb__Builder b;
    uint64_t cap;
    if (out_len == NULL) {
        return NULL;
    }
    *out_len = 0;
    if (ev == NULL) {
        return NULL;
    }
    cap = virtufin_fb__event_cap(ev);
    if (cap == 0 || !virtufin_fb__begin(&b, cap)) {
        return NULL;
    }
    return virtufin_fb__finish(&b, virtufin_fb__event_w(&b, ev), out_len);
}

/**
 * The seed's helper: a WorkerResponse whose result_event has `id`, `type`, `source` and
 * specversion "1.0" and nothing else. Returns a malloc'd buffer (release with free()) or NULL.
 */
static inline uint8_t* build_minimal_worker_response(const char* id, const char* type,
                                                     const char* source, int32_t* out_len) {
    VirtufinEventSpec ev = virtufin_event_spec(id, type, source);
    return virtufin_build_worker_response(&ev, NULL, out_len);
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VIRTUFIN_WORKER_API_C_H */
