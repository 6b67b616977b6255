from django.http import JsonResponse
from django.urls import path

from .consumers import EMPTY_QUEUE


def queue_status(request):
    return JsonResponse({"code": 200, "message": "success", "data": EMPTY_QUEUE})


urlpatterns = [path("api/tasks/queue/status", queue_status)]
