"""The server's read-models and services: what the routes call.

Views at panel resolution (`views`), the topology reader (`topology_reader`), the rewire
series (`rewire_series`) and the live-stream hubs (`stream_hub`) read the store in
`dst_core.store`; routes stay thin (parse, call a service, answer) and hold no SQL.
"""
