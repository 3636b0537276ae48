"""``path("logs/", include("redis_logstream.urls"))``: the console and its stream."""

from django.urls import path

from redis_logstream.console import views

app_name = "redis_logstream"

urlpatterns = [
    path("", views.console, name="console"),
    path("stream/", views.stream, name="stream"),
]
