// __NAME__: a workmanager .NET worker. Replies with the input's data, type "__NAME__.reply",
// and its correlationid. The DevKit 2.x API (over CloudNative.CloudEvents): docs/dotnet.md.
using System;
using System.Threading.Tasks;
using CloudNative.CloudEvents;
using Virtufin.Worker.DevKit;

public class Worker : IWorker
{
    public Task<CloudEvent> ProcessAsync(CloudEvent input)
    {
        var reply = new CloudEvent
        {
            Id = "reply-" + input.Id,
            Type = "__NAME__.reply",
            Source = new Uri("urn:workmanager:__NAME__"),
            Subject = input.Subject,
            DataContentType = input.DataContentType,
            Data = input.Data,
        };
        if (input["correlationid"] != null) reply["correlationid"] = input["correlationid"];
        return Task.FromResult(reply);
    }
}
