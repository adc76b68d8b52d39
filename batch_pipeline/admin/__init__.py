"""The API's service layer (operator actions and reads): async, on its pool; no SQL (store/), no dagster."""
