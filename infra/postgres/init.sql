-- Run once by the postgres image on an empty data volume (the `mlflow` database is POSTGRES_DB).
CREATE DATABASE optuna;
CREATE DATABASE prefect;
