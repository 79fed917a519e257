# __NAME__: a workmanager Python worker (text/x-python). Replies with the input's data, type
# "__NAME__.reply", and its correlationid. The contract (the event dict, the reply dict, None for
# no reply, the `virtufin` module, the import policy): docs/python.md.


def Process(event):
    reply = {
        "type": "__NAME__.reply",
        "source": "urn:workmanager:__NAME__",
        "data": event.get("data"),
    }
    if event.get("datacontenttype"):
        reply["datacontenttype"] = event["datacontenttype"]
    if event.get("correlationid") is not None:
        reply["correlationid"] = event["correlationid"]
    return reply
