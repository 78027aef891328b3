"""FHIR R4 test server (Medplum's FHIR router, in memory) for tests and benchmarks."""
