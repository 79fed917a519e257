/* __NAME__: a workmanager worker. Replies with the input's data and extensions, type
 * "__NAME__.reply". Start from here: the C ABI is in include/virtufin_worker_api_c.h and
 * docs/native-workers.md. */
#include <stdint.h>
#include <stdlib.h>

#include "virtufin_worker_api_c.h"

#define SOURCE_URN "urn:workmanager:__NAME__"
#define REPLY_TYPE "__NAME__.reply"
#define MAX_EXTENSIONS 64

VIRTUFIN_EXPORT int32_t Process(const VirtufinHost* host, const uint8_t* in_buf, int32_t in_len,
                                uint8_t** out_buf, int32_t* out_len) {
    VirtufinEvent in;
    VirtufinEventSpec reply;
    VirtufinExtension ext[MAX_EXTENSIONS];
    const char* id;
    int32_t rc, count, i;

    *out_buf = NULL;
    *out_len = 0;

    /* Never trust in_buf / in_len: open (and verify) the event first. */
    rc = virtufin_event_open(&in, in_buf, in_len);
    if (rc != VIRTUFIN_FB_OK) {
        virtufin_logf(host, VIRTUFIN_LOG_WARN, "__NAME__: bad input event: %s",
                      virtufin_fb_strerror(rc));
        *out_buf = virtufin_build_error_response("__NAME__: input is not a valid CloudEvent",
                                                 out_len);
        return *out_buf != NULL ? 0 : 1;
    }
    id = virtufin_event_id(&in);
    virtufin_logf(host, VIRTUFIN_LOG_INFO, "__NAME__: event %s", id != NULL ? id : "(no id)");

    reply = virtufin_event_spec("__NAME__-reply", REPLY_TYPE, SOURCE_URN);
    reply.subject = virtufin_event_subject(&in);
    reply.datacontenttype = virtufin_event_datacontenttype(&in);
    (void)virtufin_event_data(&in, &reply.data, &reply.data_len);

    /* correlationid is entry 0 when present: copying in order keeps it first. */
    count = virtufin_event_extension_count(&in);
    for (i = 0; i < count && i < MAX_EXTENSIONS; i++) {
        if (virtufin_event_extension_at(&in, i, &ext[i].name, NULL, &ext[i].value, NULL) !=
            VIRTUFIN_FB_OK) {
            break;
        }
    }
    reply.extensions = ext;
    reply.extension_count = i;

    /* The daemon calls FreeResult on this exactly once. */
    *out_buf = virtufin_build_worker_response(&reply, NULL, out_len);
    return *out_buf != NULL ? 0 : 1;
}

VIRTUFIN_EXPORT void FreeResult(uint8_t* result) {
    free(result);
}
