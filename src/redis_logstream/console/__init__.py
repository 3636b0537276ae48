"""The live console: fan-out of streams to viewers, the hubs, Server-Sent
Events, access rules, stream tokens and the Django views."""
