"""The Vertex AI–compatible API: tuningJobs and endpoints in Vertex's shapes, as google-genai drives them.

A second view of Hone's own resources: a tuning job is a fine-tuning job row, created and cancelled through
service.jobs; an endpoint is a Hone endpoint, served through the gateway. Input is read leniently (camelCase
or snake_case keys, enum names or proto numbers, int64 as numbers or strings); output is exact (camelCase,
enum names, full resource names)."""
